"""Value objects and the glossary's closed vocabularies (RULES.md §2, §3, SCENARIOS.md)."""

from __future__ import annotations

import calendar
import re
import unicodedata
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from enum import Enum

from stdnum.cn import ric

#: Local time of the programme: dates of recorded times are read in China Standard Time.
CST = timezone(timedelta(hours=8))

#: What a personal field (id number, name, …) reads as once its key was erased (ADR 0015).
ERASED = "[erased]"


class StrEnum(str, Enum):
    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


class Category(StrEnum):
    """Recipient categories (RULES.md §2)."""

    SPECIAL_RELIEF = "special_relief"
    DESTITUTE = "destitute"
    DIBAO = "dibao"
    LOW_INCOME = "low_income"
    EXPENDITURE_POOR_1 = "expenditure_poor_1"
    EXPENDITURE_POOR_2 = "expenditure_poor_2"
    ORPHAN = "orphan"
    CHILD_IN_DISTRESS = "child_in_distress"
    OTHER_HARDSHIP = "other_hardship"
    MUTUAL_AID_PARTICIPANT = "mutual_aid_participant"
    LYG_KEY = "lyg_key"
    LYG_EXTENDED = "lyg_extended"


#: 中文 names, for explanations and exports.
CATEGORY_ZH = {
    "special_relief": "特殊救济对象",
    "destitute": "特困人员",
    "dibao": "低保对象",
    "low_income": "低收入困难家庭成员",
    "expenditure_poor_1": "支出型贫困第I类",
    "expenditure_poor_2": "支出型贫困第II类",
    "orphan": "社会散居孤儿",
    "child_in_distress": "困境儿童",
    "other_hardship": "其他困难人员",
    "mutual_aid_participant": "社区医疗互助帮困计划参加对象",
    "lyg_key": "连云港重点医疗救助对象",
    "lyg_extended": "连云港拓展医疗救助对象",
}

#: R-CAT-2 tie-break: when two categories give the same aid, the first listed wins.
CATEGORY_PRECEDENCE = [c.value for c in Category]


class VisitType(StrEnum):
    OUTPATIENT = "outpatient"  # 门急诊
    INPATIENT = "inpatient"  # 住院
    OUTPATIENT_CRITICAL = "outpatient_critical"  # 门诊大病

    @property
    def cap_kind(self) -> str:
        """R-CAP-1: 门急诊 and 门诊大病 share the outpatient limit."""
        return "inpatient" if self is VisitType.INPATIENT else "outpatient"


VISIT_ZH = {"outpatient": "门急诊", "inpatient": "住院", "outpatient_critical": "门诊大病"}


class FacilityKind(StrEnum):
    COMMUNITY_HEALTH_CENTRE = "community_health_centre"  # 社区卫生服务中心
    HOSPITAL = "hospital"
    PHARMACY = "pharmacy"


class Evidence(StrEnum):
    NONE = "none"
    SETTLEMENT_SLIP = "settlement_slip"  # 城乡居保大病结算单
    RECEIPT_MARKING = "receipt_marking"  # 票据标注"居保大病65%"


class InsuranceScheme(StrEnum):
    EMPLOYEE = "employee"  # 职工医保
    RESIDENT = "resident"  # 城乡居民医保


class SettlementScheme(StrEnum):
    """Insurance paying on an expense after it was recorded (R-INS-3)."""

    CRITICAL_ILLNESS = "critical_illness"  # 居保大病
    UNION_MUTUAL_AID = "union_mutual_aid"  # 职工互助保障
    BURDEN_REDUCTION = "burden_reduction"  # 综合减负
    CHILDREN_FUND = "children_fund"  # 少儿住院互助基金
    OTHER = "other"


class Channel(StrEnum):
    ONE_STOP = "one_stop"
    POST_HOC = "post_hoc"
    AUTO = "auto"


class Fund(StrEnum):
    CITY = "city"
    DISTRICT = "district"
    MUTUAL_AID = "mutual_aid"
    SOCIAL = "social"


FUNDS = [f.value for f in Fund]


class Trigger(StrEnum):
    """R-CLR-1 (a)–(e)."""

    LATE_INSURANCE = "late_insurance"
    DUPLICATE = "duplicate"
    CATEGORY_CHANGE = "category_change"
    PARAMETER_CHANGE = "parameter_change"
    CAP_OVERRUN = "cap_overrun"


class Scheme(StrEnum):
    SHANGHAI_MEDICAL_AID = "shanghai.medical_aid"
    FOUR_LINKAGE = "changning.four_linkage"
    POST_HOC_PROCEDURE = "changning.post_hoc_procedure"
    COMMUNITY_MUTUAL_AID = "shanghai.community_mutual_aid"
    LIANYUNGANG = "lianyungang.medical_aid"


SCHEME_ZH = {
    "shanghai.medical_aid": "上海市医疗救助",
    "changning.four_linkage": "长宁区四医联动",
    "changning.post_hoc_procedure": "长宁区事后救助",
    "shanghai.community_mutual_aid": "市民社区医疗互助帮困",
    "lianyungang.medical_aid": "连云港医疗救助",
}

#: Who pays, as people read it on a statement, a report, a snapshot or an explanation: one label per
#: fund everywhere (``FUNDS``).
FUND_ZH = {"city": "市级财政", "district": "区级财政", "mutual_aid": "医疗互助帮困资金", "social": "社会组织帮扶"}


@dataclass(frozen=True)
class Facility:
    kind: FacilityKind
    level: int
    district_designated: bool = False
    out_of_province: bool = False
    code: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kind"] = self.kind.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Facility":
        return cls(
            kind=FacilityKind(d["kind"]),
            level=int(d["level"]),
            district_designated=bool(d.get("district_designated", False)),
            out_of_province=bool(d.get("out_of_province", False)),
            code=d.get("code"),
        )


#: The earliest birth date (and any other date) the ledger takes.
EARLIEST_DATE = date(1900, 1, 1)

_ID_NUMBER = re.compile(r"[0-9]{6}([0-9]{8})[0-9]{3}[0-9Xx]")


def validate_id_number(value: str, *, today: date | None) -> str:
    """An 18-character PRC resident identity number (GB 11643; SCENARIOS.md ``enrol``), in its
    canonical form (a final ``x`` is written ``X``).

    Checked: the form (17 digits 0–9 then a digit or X), the birth date it carries (a real date,
    from 1900-01-01, not after ``today``, China Standard Time, by default the clock's) and the
    check digit. Not checked: the region code's history. A region code names where the number was
    first issued, and codes are created and retired over the years (浦东新区 310115 exists since
    1993, 连云区 320703 since 1983), so a number legitimately carries a code that did not exist in
    its holder's birth year; python-stdnum's ``ric.validate`` refuses those, which kept older
    people out of the ledger. Nor is the province part restricted: foreigners' permanent
    residence numbers (2023 form) start with 9 and follow the same rule."""
    if not isinstance(value, str):
        raise ValueError("must be a string: an 18-character resident id number (GB 11643)")
    text = value.strip()
    if len(text) != 18:
        raise ValueError(f"must be 18 characters, got {len(text)} (GB 11643 resident id number)")
    if not _ID_NUMBER.fullmatch(text):
        raise ValueError("must be 17 digits 0-9 followed by a digit or X (GB 11643 resident id number)")
    text = text.upper()
    born = _birth_date_of(text)
    if born is None:
        raise ValueError(f"carries the birth date {text[6:10]}-{text[10:12]}-{text[12:14]}, which is not a real date (GB 11643: digits 7-14 are the birth date)")
    if born < EARLIEST_DATE:
        raise ValueError(f"carries the birth date {born.isoformat()}, before {EARLIEST_DATE.isoformat()} (GB 11643: digits 7-14 are the birth date)")
    if today is not None and born > today:
        raise ValueError(f"carries the birth date {born.isoformat()}, which is in the future (today is {today.isoformat()}, China Standard Time) (GB 11643: digits 7-14 are the birth date)")
    expected = ric.calc_check_digit(text)  # the GB 11643 ISO 7064 MOD 11-2 checksum over the first 17 digits
    if text[-1] != expected:
        raise ValueError(f"has the check digit {text[-1]}, but its first 17 digits give {expected} (GB 11643 check digit)")
    return text


def _birth_date_of(number: str) -> date | None:
    try:
        return date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return None


def birth_date(id_number: str) -> date:
    """The birth date an id number carries (GB 11643, digits 7–14), whatever its region code."""
    text = (id_number or "").strip()
    born = _birth_date_of(text) if _ID_NUMBER.fullmatch(text) else None
    if born is None:
        raise ValueError(f"{id_number!r} does not carry a birth date (GB 11643)")
    return born


def age_on(id_number: str, on: date) -> int:
    born = birth_date(id_number)
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def add_months(day: date, months: int) -> date:
    """The same day ``months`` later, or that month's last day where the day does not exist."""
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def micros(moment: datetime) -> int:
    """A recorded time as integer microseconds since 1970 UTC (a naive time is read as China
    Standard Time): recorded times of any offset, ordered as integers in a table's column."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=CST)
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def local_date(moment: datetime) -> date:
    """The calendar date of a recorded time, read in China Standard Time."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=CST)
    return moment.astimezone(CST).date()


def street_name(text: str | None) -> str:
    """A street office's name as kept and compared: Unicode NFKC and trimmed (``华阳路街道 `` and
    full-width spaces around it name one street office, R-PH-1 [002 4.1]); the script is kept."""
    return unicodedata.normalize("NFKC", text or "").strip()


#: Characters that show nothing (Unicode's Default_Ignorable_Code_Point, DerivedCoreProperties.txt):
#: ``Wang.Li`` with a zero-width joiner, a Hangul filler or a combining grapheme joiner inside is
#: still ``Wang.Li`` to anyone reading it, so it is to the comparison too (R-PH-4: one person cannot
#: sign twice by adding an invisible character). A blank that shows as a blank (a space, U+2800) is
#: kept: ``12 34`` is not ``1234``.
_SHOWS_NOTHING = dict.fromkeys(
    [0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, *range(0x180B, 0x1810), *range(0x200B, 0x2010),
     *range(0x202A, 0x202F), *range(0x2060, 0x2070), 0x3164, *range(0xFE00, 0xFE10), 0xFEFF, 0xFFA0,
     *range(0xFFF0, 0xFFF9), *range(0x1BCA0, 0x1BCA4), *range(0x1D173, 0x1D17B), *range(0xE0000, 0xE1000)]
)


def same_identity(text: str | None) -> str:
    """The form in which identities that people type are compared: receipts' facility codes and
    invoice numbers (R-CLR-1(b) [002 4.5]), officers (R-PH-4 [002 3.4]), names. Unicode NFKC (so
    full-width ``ＡＢ１`` is ``ab1``), case folding and trimming; ``Wang.Li`` and `` wang.li`` are
    one person (SCENARIOS.md ``review``). Characters that show nothing are left out first
    (``_SHOWS_NOTHING``), and again after normalising: ``Jose`` + U+034F + U+0301 is ``josé``."""
    folded = unicodedata.normalize("NFKC", (text or "").translate(_SHOWS_NOTHING)).casefold()
    return unicodedata.normalize("NFKC", folded).translate(_SHOWS_NOTHING).strip()


def receipt_identity(facility_code: str | None, invoice_no: str) -> tuple[str, str]:
    """R-CLR-1(b) [002 4.5; 000 第七条]: a receipt is its facility code and invoice number,
    compared as :func:`same_identity`; one recorded without a facility code is identified by its
    invoice number alone (national e-invoice numbers are unique), so its code part is ``""``."""
    return (same_identity(facility_code), same_identity(invoice_no))
