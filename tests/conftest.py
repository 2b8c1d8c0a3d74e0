import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and far faster on a busy machine); in-process results compared with
    a subprocess's logged ones need its single thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
