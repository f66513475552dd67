"""Test-wide settings: Triton runs interpreted where there is no GPU, hypothesis budgets from the env."""
import os
import shutil

# Must happen before anything imports triton: CI has no GPU, so Triton kernels run in the interpreter.
if "TRITON_INTERPRET" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["TRITON_INTERPRET"] = "1"

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "igot",
    max_examples=int(os.environ.get("IGOT_HYPOTHESIS_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("igot")
