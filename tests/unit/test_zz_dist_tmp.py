from collections import Counter
from hypothesis import given, settings
from hypothesis import strategies as st
from hostile_commands import PROFILE, build_world, check_books, commands, run_one
seen = Counter()
@settings(settings.get_profile(PROFILE))
@given(st.lists(commands(), min_size=1, max_size=4))
def test_x(steps):
    world = build_world()
    for model, data in steps:
        o = run_one(world, model, data)
        seen[(model.__name__, o.kind, o.code)] += 1
def test_print():
    for k, v in sorted(seen.items()): print(k, v)
