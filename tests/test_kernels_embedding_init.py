"""embedding_init: the Triton kernel (interpreted on CPU in CI) and the embedding_bag twin vs a float64 loop."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from igot.ops.embedding_init import embedding_init, embedding_init_torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # Triton runs interpreted on CPU tensors
BACKENDS = ("torch", "triton")
TOL = {torch.float32: dict(atol=1e-6, rtol=1e-5), torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2),
       torch.float16: dict(atol=1e-3, rtol=1e-3)}


def reference_rows(matrix, offsets, piece_ids, piece_weights):
    """float64 [M, H]: the new rows by a plain loop over new tokens (the usual FVT code)."""
    rows = []
    for j in range(len(offsets) - 1):
        ids = piece_ids[offsets[j]:offsets[j + 1]]
        w = torch.ones(len(ids), dtype=torch.float64) if piece_weights is None else piece_weights[offsets[j]:offsets[j + 1]].double()
        rows.append((w[:, None] * matrix[ids].double()).sum(0) / w.sum())
    return torch.stack(rows)


def make_case(n_new=37, n_old=131, weighted=False, seed=0):
    """Ragged CSR pieces (1 to 6 per new token, several with exactly one) over rows < n_old."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 7, (n_new,), generator=g)
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
        torch.testing.assert_close(after[n_old:n_old + n_new].cpu().double(), expected, **TOL[torch.float32])
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
                               **TOL[torch.float32])


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
                               **TOL[torch.float32])
    untouched = torch.ones(80, dtype=torch.bool)
    untouched[out_rows] = False
    assert torch.equal(emb[untouched.to(DEVICE)], before[untouched.to(DEVICE)])


def test_no_new_tokens_is_a_no_op(backend):
    emb = torch.randn(10, 8, device=DEVICE)
    before = emb.clone()
    embedding_init(emb, torch.zeros(1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), out_rows=10)
    assert torch.equal(emb, before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16/fp16 kernels run on a GPU only")
def test_half_storage_accumulates_in_fp32(backend, dtype):
    offsets, piece_ids, piece_weights, g = make_case(n_new=301, n_old=900, weighted=True)
    emb, head = matrix(1300, 4109, dtype, g), matrix(1300, 4109, dtype, g)
    before = emb.clone(), head.clone()
    embedding_init([emb, head], offsets, piece_ids, piece_weights, out_rows=900)
    for after, old in zip((emb, head), before):
        expected = reference_rows(old.cpu().float(), offsets, piece_ids, piece_weights)
        torch.testing.assert_close(after[900:1201].cpu().double(), expected.to(dtype).double(), **TOL[dtype])
        assert torch.equal(after[:900], old[:900])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_twin_half_storage_on_cpu(dtype):
    offsets, piece_ids, piece_weights, g = make_case(n_new=29, n_old=70, weighted=True, seed=7)
    emb = torch.randn(110, 40, generator=g).to(dtype)
    before = emb.clone()
    embedding_init_torch([emb], offsets, piece_ids, piece_weights, torch.arange(70, 99))
    expected = reference_rows(before.float(), offsets, piece_ids, piece_weights)
    torch.testing.assert_close(emb[70:99].double(), expected.to(dtype).double(), **TOL[dtype])
    assert torch.equal(emb[:70], before[:70]) and torch.equal(emb[99:], before[99:])


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
                               **TOL[torch.float32])


@pytest.mark.parametrize("change, error", [
    (dict(offsets=torch.tensor([0, 2, 2, 3])), ValueError),  # new token 1 has no pieces
    (dict(offsets=torch.tensor([0, 2, 3], dtype=torch.int32)), TypeError),
    (dict(piece_ids=torch.tensor([1, 2, 12])), ValueError),  # 12 is overwritten by out_rows
    (dict(piece_ids=torch.tensor([1, 2, 99])), ValueError),  # out of range
    (dict(piece_weights=torch.tensor([1.0, -1.0, 1.0])), ValueError),  # token 0's weights sum to 0
    (dict(out_rows=torch.tensor([12, 12])), ValueError),
    (dict(out_rows=torch.tensor([12, 13, 14])), ValueError),  # one row per new token
    (dict(weights=torch.zeros(20, 4, dtype=torch.float64)), TypeError),
    (dict(weights=[torch.zeros(20, 4), torch.zeros(20, 5)]), ValueError),
])
def test_bad_arguments_raise(change, error):
    args = dict(weights=torch.zeros(20, 4), offsets=torch.tensor([0, 2, 3]), piece_ids=torch.tensor([1, 2, 3]),
                piece_weights=None, out_rows=12)
    args.update(change)
    with pytest.raises(error):
        embedding_init(args.pop("weights"), args.pop("offsets"), args.pop("piece_ids"), args.pop("piece_weights"), **args)
