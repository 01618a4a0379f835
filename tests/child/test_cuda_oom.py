"""The child reports a CUDA out-of-memory error with the classifier the supervisor's
policy uses (``protocol.is_cuda_oom``): one definition for both sides."""

from __future__ import annotations

import pytest

from child.runtime import _exception_info
from protocol import ErrorType
from supervisor.gpu.eviction_policy import is_cuda_oom as policy_is_cuda_oom


@pytest.mark.parametrize(
    ("exception", "message"),
    [
        ("torch.OutOfMemoryError", ""),
        ("RuntimeError", "CUDA  out of memory. Tried to allocate 2.00 GiB"),
        ("RuntimeError", "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"),
    ],
)
def test_the_child_classifies_a_cuda_oom_as_the_supervisor_does(
    exception: str, message: str
) -> None:
    """One classifier for both sides: what the child reports as ``out_of_memory``
    is what ``eviction_policy.is_cuda_oom`` calls one."""
    exc_type = type(exception.rsplit(".", 1)[-1], (Exception,), {})
    info = _exception_info(exc_type(message), ErrorType.APP_EXCEPTION)
    assert info.type is ErrorType.OUT_OF_MEMORY
    assert policy_is_cuda_oom(exception, message)
