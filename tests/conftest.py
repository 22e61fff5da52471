import pytest

CELL_NAMES = ["linear", "elman", "forget-elman", "mgu", "gru", "lstm"]


@pytest.fixture(params=CELL_NAMES)
def cell_name(request):
    return request.param
