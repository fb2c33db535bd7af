"""Which device the host tests run ComfyUI on (tests/support/comfy_inprocess.py ``choose_device``,
tests/support/comfy_host.py ``host_device_args``): the GPU in the host's default memory mode where the host's torch
finds one, ``--cpu`` only where it finds none; ``PBE_HOST_DEVICE`` overrides, and asking for a GPU that is not there is
an error, not a quiet fall-back. The probe runs the real Python that runs ComfyUI; on this machine it finds no GPU, and
the GPU branch of the decision is checked with the answer given."""

import sys

import pytest
import torch
from comfy_host import cuda_available, host_device_args
from comfy_inprocess import choose_device, host_device


@pytest.mark.parametrize(
    ("requested", "cuda", "device"),
    [(None, False, "cpu"), (None, True, "cuda"), ("", True, "cuda"), ("auto", False, "cpu"), (" CPU ", True, "cpu"),
     ("cuda", True, "cuda")],
)  # fmt: skip
def test_the_machine_decides_unless_told(requested, cuda, device):
    assert choose_device(requested, cuda) == device


def test_a_gpu_asked_for_where_there_is_none_is_an_error():
    with pytest.raises(ValueError, match=r"PBE_HOST_DEVICE=cuda, but the host's torch finds no CUDA GPU"):
        choose_device("cuda", False)
    with pytest.raises(ValueError, match=r"PBE_HOST_DEVICE='gpu': give cpu, cuda or auto"):
        choose_device("gpu", True)


def test_the_probe_asks_the_python_that_runs_comfyui(monkeypatch):
    monkeypatch.delenv("PBE_HOST_DEVICE", raising=False)
    found = torch.cuda.is_available()
    assert cuda_available(sys.executable) is found
    assert host_device_args(sys.executable) == ([] if found else ["--cpu"])
    assert host_device() == ("cuda" if found else "cpu")
    monkeypatch.setenv("PBE_HOST_DEVICE", "cpu")
    assert host_device_args(sys.executable) == ["--cpu"]


def test_a_python_that_cannot_answer_is_named():
    with pytest.raises(RuntimeError, match="/bin/false could not import torch"):
        cuda_available("/bin/false")
