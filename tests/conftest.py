import os

os.environ.setdefault("MPLBACKEND", "Agg")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny torch models: extra intra-op threads only add contention on a shared machine.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tok():
    """The tiny emotion world's word-level tokenizer (the trainer and torch-loss tests share
    it; built once per module)."""
    from rdpo_theory.torch.emotion import build_tokenizer

    return build_tokenizer()
