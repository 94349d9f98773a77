import infra.ops, infra.integrity
def test_x():
    pass
