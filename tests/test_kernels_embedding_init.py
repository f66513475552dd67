"""embedding_init: the Triton kernel (interpreted on CPU in CI) and the embedding_bag twin vs a float64 loop."""
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from igot.ops.embedding_init import embedding_init, embedding_init_torch
from test_kernels_fused_linear_ce import assert_within_one_ulp

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # Triton runs interpreted on CPU tensors
BACKENDS = ("torch", "triton")
FP32 = dict(atol=1e-6, rtol=1e-5)


def reference_rows(matrix, offsets, piece_ids, piece_weights):
    """float64 [M, H]: the new rows by a plain loop over new tokens (the usual FVT code)."""
    rows = []
    for j in range(len(offsets) - 1):
        ids = piece_ids[offsets[j]:offsets[j + 1]]
        w = torch.ones(len(ids), dtype=torch.float64) if piece_weights is None else piece_weights[offsets[j]:offsets[j + 1]].double()
        rows.append((w[:, None] * matrix[ids].double()).sum(0) / w.sum())
    return torch.stack(rows)


def make_case(n_new=37, n_old=131, weighted=False, seed=0, max_pieces=6):
    """Ragged CSR pieces (1 to max_pieces per new token, several with exactly one) over rows < n_old."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, max_pieces + 1, (n_new,), generator=g)
    counts[::5] = 1
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    piece_ids = torch.randint(0, n_old, (int(offsets[-1]),), generator=g)
    piece_weights = torch.rand(len(piece_ids), generator=g) + 0.05 if weighted else None
    return offsets, piece_ids, piece_weights, g


def matrix(n_rows, width, dtype, g):
    return torch.randn(n_rows, width, generator=g).to(dtype=dtype, device=DEVICE)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("IGOT_KERNELS", request.param)
    return request.param


@pytest.mark.parametrize("weighted", [False, True])
def test_untied_pair_matches_float64_loop_and_keeps_old_rows(backend, weighted):
    offsets, piece_ids, piece_weights, g = make_case(weighted=weighted)
    n_old, n_new = 131, len(offsets) - 1
    emb, head = matrix(n_old + n_new + 5, 48, torch.float32, g), matrix(n_old + n_new + 9, 48, torch.float32, g)
    emb_before, head_before = emb.clone(), head.clone()
    embedding_init([emb, head], offsets, piece_ids, piece_weights, out_rows=n_old)
    for after, before in ((emb, emb_before), (head, head_before)):
        expected = reference_rows(before.cpu(), offsets, piece_ids, piece_weights)
        torch.testing.assert_close(after[n_old:n_old + n_new].cpu().double(), expected, **FP32)
        assert torch.equal(after[:n_old], before[:n_old])
        assert torch.equal(after[n_old + n_new:], before[n_old + n_new:])


def test_kernel_equals_twin(monkeypatch):
    offsets, piece_ids, piece_weights, g = make_case(n_new=23, weighted=True, seed=3)
    emb = matrix(200, 33, torch.float32, g)
    results = {}
    for name in BACKENDS:
        monkeypatch.setenv("IGOT_KERNELS", name)
        results[name] = emb.clone()
        embedding_init(results[name], offsets, piece_ids, piece_weights, out_rows=150)
    torch.testing.assert_close(results["triton"], results["torch"], atol=1e-6, rtol=1e-6)


def test_tied_head_is_written_once(backend):
    offsets, piece_ids, _, g = make_case(n_new=11, n_old=40)
    emb = matrix(60, 20, torch.float32, g)
    before = emb.clone()
    embedding_init([emb, emb], offsets, piece_ids, out_rows=40)  # the tied case: the same tensor twice
    torch.testing.assert_close(emb[40:51].cpu().double(), reference_rows(before.cpu(), offsets, piece_ids, None),
                               **FP32)


def test_both_matrices_in_one_launch(monkeypatch):
    import igot.kernels.embedding_init as kernel_module

    launches = []

    class Counting:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            launches.append(grid)
            return self.kernel[grid]

    monkeypatch.setattr(kernel_module, "_embedding_init_fwd_kernel", Counting(kernel_module._embedding_init_fwd_kernel))
    monkeypatch.setenv("IGOT_KERNELS", "triton")
    offsets, piece_ids, _, g = make_case(n_new=5, n_old=30)
    emb, head = matrix(40, 16, torch.float32, g), matrix(40, 16, torch.float32, g)
    embedding_init([emb, head], offsets, piece_ids, out_rows=30)
    assert len(launches) == 1


def test_explicit_destination_rows(backend):
    offsets, piece_ids, piece_weights, g = make_case(n_new=9, n_old=50, weighted=True, seed=5)
    emb = matrix(80, 24, torch.float32, g)
    before = emb.clone()
    out_rows = torch.randperm(30, generator=g)[:9] + 50  # scattered rows past the old ones
    embedding_init(emb, offsets, piece_ids, piece_weights, out_rows=out_rows)
    torch.testing.assert_close(emb[out_rows].cpu().double(), reference_rows(before.cpu(), offsets, piece_ids, piece_weights),
                               **FP32)
    untouched = torch.ones(80, dtype=torch.bool)
    untouched[out_rows] = False
    assert torch.equal(emb[untouched.to(DEVICE)], before[untouched.to(DEVICE)])


def test_no_new_tokens_is_a_no_op(backend):
    emb = torch.randn(10, 8, device=DEVICE)
    before = emb.clone()
    embedding_init(emb, torch.zeros(1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), out_rows=10)
    assert torch.equal(emb, before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_storage_accumulates_in_fp32(backend, dtype):
    """16-bit matrices, up to 40 pieces per new token: every new row is the exact weighted mean of the
    same 16-bit rows rounded once (within one ulp), which summing in 16 bits misses by several. Runs on
    the CPU too (the twin, and the kernel under TRITON_INTERPRET=1: the interpreter runs 16-bit types)."""
    offsets, piece_ids, piece_weights, g = make_case(n_new=41, n_old=300, weighted=True, max_pieces=40)
    emb, head = matrix(360, 37, dtype, g), matrix(350, 37, dtype, g)
    before = emb.clone(), head.clone()
    embedding_init([emb, head], offsets, piece_ids, piece_weights, out_rows=300)
    for name, after, old in zip(("emb", "head"), (emb, head), before):
        exact = reference_rows(old.cpu(), offsets, piece_ids, piece_weights)  # float64 from the 16-bit rows
        assert_within_one_ulp(after[300:341], exact, dtype, name)
        assert torch.equal(after[:300], old[:300]) and torch.equal(after[341:], old[341:])


@given(
    counts=st.lists(st.integers(1, 5), min_size=1, max_size=20),
    width=st.integers(1, 40),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_twin_matches_loop_on_random_shapes(counts, width, weighted, seed):
    g = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0] + counts).cumsum(0)
    n_old, n_new = 17, len(counts)
    piece_ids = torch.randint(0, n_old, (int(offsets[-1]),), generator=g)
    piece_weights = torch.rand(len(piece_ids), generator=g) + 0.01 if weighted else None
    emb = torch.randn(n_old + n_new, width, generator=g)
    before = emb.clone()
    embedding_init_torch([emb], offsets, piece_ids, piece_weights, torch.arange(n_old, n_old + n_new))
    torch.testing.assert_close(emb[n_old:].double(), reference_rows(before, offsets, piece_ids, piece_weights),
                               **FP32)


@pytest.mark.parametrize("change, error, message", [
    (dict(offsets=torch.tensor([0, 2, 2, 3])), ValueError, "new token 1 has no pieces"),
    (dict(offsets=torch.tensor([1, 2, 3])), ValueError, "offsets must start at 0 and end at len(piece_ids)=3"),
    (dict(offsets=torch.tensor([0, 2, 3], dtype=torch.int32)), TypeError, "offsets must be a 1-D int64 tensor"),
    (dict(piece_ids=[1, 2, 3]), TypeError, "piece_ids must be a 1-D int64 tensor, got list"),
    (dict(piece_ids=torch.tensor([1, 2, 12])), ValueError, "piece_ids names a row that out_rows overwrites"),
    (dict(piece_ids=torch.tensor([1, 2, 99])), ValueError, "piece_ids must lie in [0, 20); got [1, 99]"),
    (dict(piece_weights=torch.tensor([1.0, -1.0, 1.0])), ValueError, "positive sum for every new token"),
    (dict(piece_weights=torch.tensor([1, 1, 1])), TypeError, "piece_weights must be a floating-point tensor"),
    (dict(piece_weights=torch.ones(2)), ValueError, "piece_weights has shape (2,), piece_ids (3,)"),
    (dict(out_rows=torch.tensor([12, 12])), ValueError, "out_rows repeats a row"),
    (dict(out_rows=torch.tensor([12, 13, 14])), ValueError, "out_rows holds 3 rows for 2 new tokens"),
    (dict(out_rows=torch.tensor([12, 20])), ValueError, "out_rows must lie in [0, 20); got [12, 20]"),
    (dict(out_rows=12.0), TypeError, "out_rows must be the first new row (int) or a 1-D int64 tensor"),
    (dict(weights=torch.zeros(20, 4, dtype=torch.float64)), TypeError, "weights has dtype torch.float64"),
    (dict(weights=[torch.zeros(20, 4), torch.zeros(20, 5)]), ValueError, "2-D matrices of one width"),
    (dict(weights=[]), ValueError, "weights is empty"),
    (dict(weights=[torch.zeros(20, 4), "head"]), TypeError, "weights holds a str"),
    (dict(weights=torch.zeros(4, 20).T), ValueError, "pass row-major matrices"),
])
def test_bad_arguments_raise(change, error, message):
    args = dict(weights=torch.zeros(20, 4), offsets=torch.tensor([0, 2, 3]), piece_ids=torch.tensor([1, 2, 3]),
                piece_weights=None, out_rows=12)
    args.update(change)
    with pytest.raises(error, match=re.escape(message)):
        embedding_init(args.pop("weights"), args.pop("offsets"), args.pop("piece_ids"), args.pop("piece_weights"), **args)
