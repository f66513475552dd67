"""Fused linear cross-entropy: the Triton kernel (interpreted on CPU in CI) and the chunked torch twin,
each against a float64 reference that materialises the logits."""
import os

import pytest
import torch
import torch.nn.functional as F

from igot.ops import fused_linear_cross_entropy
import igot.ops.fused_linear_ce as twin_module

BACKENDS = ["torch", "triton"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # tests/conftest.py sets it where there is no GPU


def default_device(backend):
    """Where a backend runs here: the twin on CPU; Triton on CPU when interpreted, else on the GPU."""
    return "cpu" if backend == "torch" or INTERPRETED else "cuda"


def reference_loss(hidden, weight, targets, bias=None, ignore_index=-100, reduction="mean", vocab_mask=None):
    """Ground truth in float64 with the full [N, V] logits: Σ over valid (row, target) of lse − z."""
    logits = F.linear(hidden.double(), weight.double(), None if bias is None else bias.double())  # [N, V]
    if vocab_mask is not None:
        logits = logits.masked_fill(~vocab_mask, float("-inf"))
    lse = logits.logsumexp(-1)  # [N]
    targets_2d = targets if targets.dim() == 2 else targets[:, None]  # [N, K]
    valid = targets_2d != ignore_index
    pair_loss = (lse[:, None] - logits.gather(1, targets_2d.clamp(0, weight.shape[0] - 1))) * valid
    rows = pair_loss.sum(1)  # [N]
    if reduction == "none":
        return rows, lse
    total = rows.sum()
    return (total / valid.sum().clamp(min=1) if reduction == "mean" else total), lse


def make_inputs(n, v, h, k, *, ignore_share=0.25, bias=True, mask=False, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) / h**0.5 * 4
    bias_t = torch.randn(v, generator=gen, dtype=torch.float64) if bias else None
    vocab_mask = None
    high = v
    if mask:
        vocab_mask = torch.rand(v, generator=gen) > 0.2
        vocab_mask[0] = True
    shape = (n,) if k == 1 else (n, k)
    targets = torch.randint(0, high, shape, generator=gen)
    if vocab_mask is not None:  # valid targets only on kept rows
        kept = vocab_mask.nonzero().flatten()
        targets = kept[torch.randint(0, len(kept), shape, generator=gen)]
    targets[torch.rand(shape, generator=gen) < ignore_share] = -100
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)
    return dict(hidden=cast(hidden), weight=cast(weight), bias=cast(bias_t), targets=targets.to(device),
                vocab_mask=None if vocab_mask is None else vocab_mask.to(device))


def run_both(inputs, backend, monkeypatch, reduction="mean", ignore_index=-100, return_lse=True):
    """(fast loss, lse, grads) and (reference loss, lse, grads) for one random upstream gradient."""
    monkeypatch.setenv("IGOT_KERNELS", backend)
    leaves = {name: inputs[name] for name in ("hidden", "weight", "bias") if inputs[name] is not None}
    fast_leaves = {name: t.clone().requires_grad_() for name, t in leaves.items()}
    ref_leaves = {name: t.double().clone().requires_grad_() for name, t in leaves.items()}
    rest = dict(targets=inputs["targets"], vocab_mask=inputs["vocab_mask"], ignore_index=ignore_index, reduction=reduction)
    loss, lse = fused_linear_cross_entropy(**fast_leaves, **rest, return_lse=True)
    ref_loss, ref_lse = reference_loss(**{"bias": None, **ref_leaves}, **rest)
    upstream = torch.randn(ref_loss.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (loss.double() * upstream.to(loss.device)).sum().backward()
    (ref_loss * upstream.to(ref_loss.device)).sum().backward()
    grads = {name: t.grad for name, t in fast_leaves.items()}
    ref_grads = {name: t.grad for name, t in ref_leaves.items()}
    return (loss, lse, grads), (ref_loss, ref_lse, ref_grads)


def assert_matches(fast, ref, tol, dtype=torch.float32):
    (loss, lse, grads), (ref_loss, ref_lse, ref_grads) = fast, ref
    assert loss.dtype == dtype and lse.dtype == dtype
    torch.testing.assert_close(loss.double(), ref_loss, **tol)
    torch.testing.assert_close(lse.double(), ref_lse, **tol)
    for name, ref_grad in ref_grads.items():
        torch.testing.assert_close(grads[name].double(), ref_grad, **tol, msg=lambda m: f"grad {name}: {m}")


def force_chunk_rows(monkeypatch, rows, backend):
    """Make the twin (and for "triton" the kernel) walk N in chunks of `rows` rows."""
    monkeypatch.setattr(twin_module, "_twin_chunk_rows", lambda n_rows, n_vocab: rows)
    if backend == "triton":
        import igot.kernels.fused_linear_ce as kernel_module

        monkeypatch.setattr(kernel_module, "_default_chunk_rows", lambda n_hidden: rows)


FP32 = dict(rtol=1e-4, atol=1e-5)  # fp32 sums over V with cancellation (softmax minus one-hot)

CASES = [  # n, v, h, k, reduction, bias, mask
    (37, 301, 48, 1, "mean", True, False),  # odd sizes, K = 1: plain cross-entropy
    (37, 301, 48, 4, "mean", False, True),  # patch loss with excluded vocabulary rows
    (19, 130, 24, 1, "sum", True, True),
    (23, 77, 16, 4, "none", True, False),
    (8, 5000, 16, 2, "sum", False, False),  # several V blocks per row
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,v,h,k,reduction,bias,mask", CASES)
def test_matches_float64_reference(n, v, h, k, reduction, bias, mask, backend, device, monkeypatch):
    if backend == "triton" and device == "cpu" and not INTERPRETED:
        pytest.skip("compiled Triton needs CUDA tensors")
    inputs = make_inputs(n, v, h, k, bias=bias, mask=mask, device=device)
    fast, ref = run_both(inputs, backend, monkeypatch, reduction=reduction)
    assert_matches(fast, ref, FP32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_chunks_match_one(backend, monkeypatch):
    """Chunk boundaries (with a short last chunk) change nothing."""
    force_chunk_rows(monkeypatch, 7, backend)
    inputs = make_inputs(31, 130, 24, 4, mask=True, device=default_device(backend))
    for reduction in ("mean", "none"):
        fast, ref = run_both(inputs, backend, monkeypatch, reduction=reduction)
        assert_matches(fast, ref, FP32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored_give_zero_loss_and_zero_grads(backend, reduction, monkeypatch):
    inputs = make_inputs(9, 60, 16, 4, ignore_share=1.0, device=default_device(backend))
    (loss, lse, grads), _ = run_both(inputs, backend, monkeypatch, reduction=reduction)
    assert torch.isfinite(lse).all()
    assert (loss == 0).all()
    for grad in grads.values():
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_index_inside_vocabulary(backend, monkeypatch):
    """A pad id that is also a vocabulary row (ignore_index=0) is ignored, not trained towards."""
    inputs = make_inputs(17, 90, 16, 2, ignore_share=0.0, device=default_device(backend))
    inputs["targets"][::3, 0] = 0
    fast, ref = run_both(inputs, backend, monkeypatch, ignore_index=0)
    assert_matches(fast, ref, FP32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_k1_equals_torch_cross_entropy(backend, monkeypatch):
    monkeypatch.setenv("IGOT_KERNELS", backend)
    inputs = make_inputs(29, 211, 32, 1, device=default_device(backend))
    hidden, weight, bias, targets = inputs["hidden"], inputs["weight"], inputs["bias"], inputs["targets"]
    expected = F.cross_entropy(F.linear(hidden, weight, bias), targets)
    torch.testing.assert_close(fused_linear_cross_entropy(hidden, weight, targets, bias=bias), expected, **FP32)
    if hasattr(F, "linear_cross_entropy"):  # torch >= 2.10 has its own (K = 1 only)
        theirs = F.linear_cross_entropy(hidden, weight, targets, linear_bias=bias)
        torch.testing.assert_close(fused_linear_cross_entropy(hidden, weight, targets, bias=bias), theirs, **FP32)


def test_no_grad_makes_no_gradients(monkeypatch):
    """Under torch.no_grad (evaluation) the kernel path computes the loss only, not the gradients."""
    import igot.kernels.fused_linear_ce as kernel_module

    def refuse(*args, **kwargs):
        raise AssertionError("gradient work under torch.no_grad")

    monkeypatch.setattr(kernel_module, "_accumulate_weight_grad", refuse)
    monkeypatch.setenv("IGOT_KERNELS", "triton")
    inputs = make_inputs(13, 70, 16, 1, device=default_device("triton"))
    leaves = {n: inputs[n].clone().requires_grad_() for n in ("hidden", "weight", "bias")}
    with torch.no_grad():
        loss = fused_linear_cross_entropy(**leaves, targets=inputs["targets"])
    ref_loss, _ = reference_loss(**{n: t.detach() for n, t in leaves.items()}, targets=inputs["targets"])
    torch.testing.assert_close(loss.double(), ref_loss, **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_backward_raises(backend, monkeypatch):
    """Gradients made in forward ("mean"/"sum") serve one backward; a second one must not reuse them."""
    monkeypatch.setenv("IGOT_KERNELS", backend)
    inputs = make_inputs(5, 40, 8, 1, bias=False, device=default_device(backend))
    loss = fused_linear_cross_entropy(inputs["hidden"].requires_grad_(), inputs["weight"], inputs["targets"])
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_reduction_none_backward_twice(backend, monkeypatch):
    """reduction="none" recomputes in backward, so retain_graph works: two backwards give twice the grads."""
    monkeypatch.setenv("IGOT_KERNELS", backend)
    inputs = make_inputs(11, 50, 8, 2, device=default_device(backend))
    hidden = inputs["hidden"].requires_grad_()
    loss = fused_linear_cross_entropy(hidden, inputs["weight"], inputs["targets"], reduction="none").sum()
    loss.backward(retain_graph=True)
    once = hidden.grad.clone()
    loss.backward()
    torch.testing.assert_close(hidden.grad, 2 * once)


def test_twin_gradcheck_float64(monkeypatch):
    """reduction "none" (recomputed in backward) passes gradcheck, which runs backward several times."""
    monkeypatch.setenv("IGOT_KERNELS", "torch")
    force_chunk_rows(monkeypatch, 2, "torch")  # several chunks
    inputs = make_inputs(6, 11, 5, 3, dtype=torch.float64, mask=True, ignore_share=0.3)
    torch.autograd.gradcheck(
        lambda h, w, b: fused_linear_cross_entropy(h, w, inputs["targets"], bias=b, reduction="none",
                                                    vocab_mask=inputs["vocab_mask"]),
        tuple(inputs[n].clone().requires_grad_() for n in ("hidden", "weight", "bias")),
    )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_twin_float64_gradients_made_in_forward(reduction, monkeypatch):
    """The gradients made in forward (one backward only, so no gradcheck) equal float64 autograd through
    the materialised logits to float64 rounding."""
    force_chunk_rows(monkeypatch, 4, "torch")
    inputs = make_inputs(19, 37, 8, 3, dtype=torch.float64, mask=True, ignore_share=0.3)
    fast, ref = run_both(inputs, "torch", monkeypatch, reduction=reduction)
    assert_matches(fast, ref, dict(rtol=1e-12, atol=1e-12), dtype=torch.float64)


def exact_16bit_inputs(n, v, h, k, dtype, device, seed=0):
    """Inputs whose logits are exact in 16 bits (h in {0, ±1/2, ±1}, W in {0, ±1/4, ±1/2}, b in k/8: every
    logit is a multiple of 1/8 below 32), so the kernel and the reference start from the same logits; half
    the rows aim at three ids, whose weight-gradient rows then add up with one sign over every chunk."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-2, 3, (n, h), generator=gen) / 2
    weight = torch.randint(-2, 3, (v, h), generator=gen) / 4
    bias = torch.randint(-8, 9, (v,), generator=gen) / 8
    targets = torch.randint(0, v, (n, k), generator=gen)
    targets[: n // 2] = torch.randint(0, 3, (n // 2, k), generator=gen)
    targets[torch.rand(n, k, generator=gen) < 0.2] = -100
    cast = lambda t: t.to(device=device, dtype=dtype)
    return dict(hidden=cast(hidden), weight=cast(weight), bias=cast(bias),
                targets=(targets if k > 1 else targets[:, 0]).to(device))


def round_as_kernel_stores(values, dtype):
    """fp32 → dtype as the Triton kernel's 16-bit store does it: round to nearest even on a GPU; the
    interpreter (triton/runtime/interpreter.py, cast_impl) truncates fp32 → bfloat16 instead."""
    if INTERPRETED and dtype == torch.bfloat16:
        return (values.float().cpu().view(torch.int32) & -65536).view(torch.float32).to(values.device)
    return values.to(dtype).float()


def reference_16bit(hidden, weight, bias, targets, grad_logits_dtype=None):
    """The 16-bit contract in float64 from the same 16-bit inputs: exact logits, fp32 softmax, d_logits
    rounded to grad_logits_dtype where the kernel stores them so (None: kept in fp32, as the twin does),
    every sum in float64."""
    targets_2d = (targets if targets.dim() == 2 else targets[:, None]).cpu()  # [N, K]
    hidden, weight, bias = (t.cpu().double() for t in (hidden, weight, bias))
    logits = hidden @ weight.T + bias  # [N, V], exact by construction of the inputs
    valid = targets_2d != -100
    n_valid = valid.sum()
    lse = logits.logsumexp(-1)
    loss = ((lse[:, None] - logits.gather(1, targets_2d.clamp(min=0))) * valid).sum() / n_valid
    # d loss / d z in fp32, as the kernel makes it (the twin keeps it in fp32 too)
    grad_logits = torch.exp(logits.float() - lse.float()[:, None]) * (valid.sum(1, keepdim=True) / n_valid).float()
    grad_logits.scatter_add_(1, targets_2d.clamp(min=0), -(valid / n_valid).float())
    if grad_logits_dtype is not None:
        grad_logits = round_as_kernel_stores(grad_logits, grad_logits_dtype)
    grad_logits = grad_logits.double()
    return loss, lse, dict(hidden=grad_logits @ weight, weight=grad_logits.T @ hidden, bias=grad_logits.sum(0))


def assert_within_one_ulp(got, exact, dtype, name):
    """Every element of the 16-bit `got` is within one unit in the last place of `exact` (a correctly
    rounded fp32-accumulated result is within half of one; summing in 16 bits is many off)."""
    ulp = torch.finfo(dtype).eps * torch.exp2(torch.floor(torch.log2(exact.abs().clamp(min=1e-30))))
    allowed = torch.maximum(ulp, 1e-5 * exact.abs().max())  # near-zero sums: fp32 rounding of their terms
    error = (got.cpu().double() - exact).abs() / allowed
    assert float(error.max()) <= 1, f"grad {name}: {int((error > 1).sum())} of {error.numel()} elements more " \
                                    f"than one ulp off, worst {float(error.max()):.1f}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [1, 4])
def test_16bit_accumulates_in_fp32(backend, dtype, k, monkeypatch):
    """16-bit inputs over 16 chunks: lse and loss in fp32, each gradient rounded once from an fp32 sum
    over all chunks; runs on the CPU too (the twin, and the kernel under TRITON_INTERPRET=1)."""
    device = default_device(backend)
    if backend == "triton" and device == "cpu" and not INTERPRETED:
        pytest.skip("compiled Triton needs CUDA tensors")
    monkeypatch.setenv("IGOT_KERNELS", backend)
    force_chunk_rows(monkeypatch, 6, backend)
    inputs = exact_16bit_inputs(96, 160, 32, k, dtype, device)
    leaves = {name: inputs[name].clone().requires_grad_() for name in ("hidden", "weight", "bias")}
    loss, lse = fused_linear_cross_entropy(**leaves, targets=inputs["targets"], return_lse=True)
    loss.backward()  # upstream gradient 1: the gradients are rounded to 16 bits once, not rescaled
    ref_loss, ref_lse, ref_grads = reference_16bit(**inputs, grad_logits_dtype=dtype if backend == "triton" else None)
    assert loss.dtype == lse.dtype == torch.float32
    torch.testing.assert_close(loss.cpu().double(), ref_loss, rtol=2e-6, atol=0)
    torch.testing.assert_close(lse.cpu().double(), ref_lse, rtol=2e-6, atol=0)
    for name, exact in ref_grads.items():
        assert leaves[name].grad.dtype == dtype
        assert_within_one_ulp(leaves[name].grad, exact, dtype, name)


BAD_INPUTS = [  # (change to good inputs, exception, text in message)
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(targets=torch.zeros(10, dtype=torch.float32)), TypeError, "targets.dtype"),
    (dict(targets=torch.zeros(9, dtype=torch.long)), ValueError, "targets.shape"),
    (dict(targets=torch.zeros(10, 0, dtype=torch.long)), ValueError, "targets.shape"),
    (dict(targets=torch.full((10,), 40)), ValueError, "outside [0, V)"),
    (dict(targets=torch.full((10,), -3)), ValueError, "outside [0, V)"),
    (dict(weight=torch.randn(40, 7)), ValueError, "weight.shape"),
    (dict(weight=torch.randn(40, 8, dtype=torch.float64)), TypeError, "weight.dtype"),
    (dict(hidden=torch.randn(10, 8).long(), weight=torch.randn(40, 8).long()), TypeError, "hidden.dtype"),
    (dict(hidden=torch.randn(2, 10, 8)), ValueError, "hidden must be"),
    (dict(bias=torch.randn(41)), ValueError, "bias.shape"),
    (dict(vocab_mask=torch.ones(40)), TypeError, "vocab_mask.dtype"),
    (dict(vocab_mask=torch.ones(39, dtype=torch.bool)), ValueError, "vocab_mask.shape"),
    (dict(vocab_mask=torch.zeros(40, dtype=torch.bool)), ValueError, "keeps no vocabulary row"),
    (dict(vocab_mask=torch.arange(40) != 3, targets=torch.full((10,), 3)), ValueError, "vocab_mask excludes"),
    (dict(ignore_index=1.5), TypeError, "ignore_index"),
    (dict(hidden=[[0.0] * 8] * 10), TypeError, "hidden must be a torch.Tensor"),
]


@pytest.mark.parametrize("change,error,text", BAD_INPUTS)
def test_bad_inputs_raise(change, error, text):
    good = dict(hidden=torch.randn(10, 8), weight=torch.randn(40, 8), targets=torch.randint(0, 40, (10,)))
    with pytest.raises(error, match=__import__("re").escape(text)):
        fused_linear_cross_entropy(**{**good, **change})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_mixed_devices_raise():
    with pytest.raises(ValueError, match="is on cpu"):
        fused_linear_cross_entropy(torch.randn(4, 8, device="cuda"), torch.randn(10, 8), torch.zeros(4, dtype=torch.long))
