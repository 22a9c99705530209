"""gru_lib.inference computes nn.GRU's forward (within 1e-5) on every path of csrc/gru_infer.cpp: AVX-512, AVX2
and portable code (each that this CPU runs; the others skip, saying why), "rows" and "cols" threading, one and two threads, both barriers, lengths, odd sizes,
non-contiguous inputs; its packed-weight cache follows in-place changes of the weight."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from gru_lib import inference, isa, native
from gru_lib.errors import GruLibError
from gru_lib.inference import gru_infer_scan, packed_weights, unsupported_reason

TOL = 1e-5


@pytest.fixture(scope="module")
def module():
    built = inference.extension()
    assert built is not None, native.load_error("gru_infer")
    return built


def make(inputs: int, hidden: int, bias: bool = True, seed: int = 0) -> nn.GRU:
    torch.manual_seed(seed)
    gru = nn.GRU(inputs, hidden, bias=bias)
    with torch.no_grad():  # larger than the default init, so the gates leave their linear range
        for p in gru.parameters():
            p.mul_(3.0)
    return gru


def weights(gru: nn.GRU) -> tuple[torch.Tensor, ...]:
    return (gru.weight_ih_l0, gru.weight_hh_l0, getattr(gru, "bias_ih_l0", None), getattr(gru, "bias_hh_l0", None))


def reference(gru: nn.GRU, x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out, h_n = gru(x, h0.unsqueeze(0))
    return out, h_n[0]


def infer(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """gru_infer_scan under no_grad, where callers use it."""
    with torch.no_grad():
        return gru_infer_scan(*args, **kwargs)


def assert_close(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]) -> None:
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert (g - w).abs().max().item() <= TOL


SHAPES = [  # (B, D, H, T)
    (1, 128, 256, 9), (1, 5, 7, 6), (2, 9, 33, 5), (3, 33, 257, 4), (16, 20, 33, 7), (64, 16, 257, 3),
    (9, 7, 16, 5), (5, 300, 17, 4),
]


@pytest.mark.parametrize("batch,inputs,hidden,steps", SHAPES)
@pytest.mark.parametrize("mode,threads", [("rows", 1), ("rows", 2), ("cols", 2)])
def test_matches_nn_gru(module, level: str, batch: int, inputs: int, hidden: int, steps: int, mode: str, threads: int) -> None:
    gru = make(inputs, hidden, seed=batch + hidden)
    x = torch.randn(steps, batch, inputs)
    h0 = torch.randn(batch, hidden)
    got = infer(x, h0, *weights(gru), mode=mode, threads=threads)
    assert_close(got, reference(gru, x, h0))


@pytest.mark.parametrize("spin,bias", list(itertools.product([True, False], [True, False])))
def test_kernel_variants(module, level: str, spin: bool, bias: bool) -> None:
    """OpenMP's barrier and a layer without biases give the same results, on every path."""
    gru = make(11, 40, bias=bias)
    x, h0 = torch.randn(6, 3, 11), torch.randn(3, 40)
    w_ih, w_hh, b_ih, b_hh = weights(gru)
    for mode, threads in [("rows", 1), ("cols", 2), ("rows", 2)]:
        with torch.no_grad():
            got = module.forward(x, h0, w_ih, packed_weights(w_hh), b_ih, b_hh, None, mode, threads,
                                 isa.level_index(level), [0, int(spin)])
        assert_close(got, reference(gru, x, h0))


def test_default_threads_follow_torch(module) -> None:
    gru = make(6, 33)
    x, h0 = torch.randn(5, 2, 6), torch.randn(2, 33)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert_close(infer(x, h0, *weights(gru)), reference(gru, x, h0))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("mode,threads", [("rows", 2), ("cols", 2), ("rows", 1)])
def test_lengths(module, level: str, mode: str, threads: int) -> None:
    """Padded steps are 0 and h_n is the state after each row's last valid step (h0 for length 0), as
    nn.GRU run on each row's valid prefix alone gives."""
    gru = make(5, 19)
    steps, lengths = 7, torch.tensor([7, 3, 0, 1, 6])
    x, h0 = torch.randn(steps, 5, 5), torch.randn(5, 19)
    out, h_n = infer(x, h0, *weights(gru), lengths, mode=mode, threads=threads)
    for b, length in enumerate(lengths.tolist()):
        assert bool((out[length:, b] == 0).all())
        if length == 0:
            assert torch.equal(h_n[b], h0[b])
            continue
        want_out, want_h = reference(gru, x[:length, b: b + 1], h0[b: b + 1])
        assert (out[:length, b] - want_out[:, 0]).abs().max().item() <= TOL
        assert (h_n[b] - want_h[0]).abs().max().item() <= TOL


@pytest.mark.parametrize("with_lengths", [False, True])
def test_reverse(module, level: str, with_lengths: bool) -> None:
    """reverse=True reads each row backwards within its length: nn.GRU on the reversed valid prefix."""
    gru = make(6, 21)
    steps = 6
    lengths = torch.tensor([6, 2, 0, 5]) if with_lengths else torch.full((4,), steps)
    x, h0 = torch.randn(steps, 4, 6), torch.randn(4, 21)
    out, h_n = infer(x, h0, *weights(gru), lengths if with_lengths else None, reverse=True, mode="cols", threads=2)
    for b, length in enumerate(lengths.tolist()):
        assert bool((out[length:, b] == 0).all())
        if length == 0:
            assert torch.equal(h_n[b], h0[b])
            continue
        want_out, want_h = reference(gru, x[:length, b: b + 1].flip(0), h0[b: b + 1])
        assert (out[:length, b] - want_out[:, 0].flip(0)).abs().max().item() <= TOL
        assert (h_n[b] - want_h[0]).abs().max().item() <= TOL


def test_same_as_fast_gru_scan(module) -> None:
    """The contract FastGRU's no-grad path hands over: the same results as fast_gru_scan, both directions."""
    from gru_lib.fast import fast_gru_scan

    gru = make(7, 30)
    x, h0, lengths = torch.randn(5, 3, 7), torch.randn(3, 30), torch.tensor([5, 1, 3])
    w_ih, w_hh, b_ih, b_hh = weights(gru)
    with torch.no_grad():
        for reverse, lens in itertools.product([False, True], [None, lengths]):
            want = fast_gru_scan(x, h0, lens, w_ih, w_hh, b_ih, b_hh, reverse)
            assert_close(infer(x, h0, w_ih, w_hh, b_ih, b_hh, lens, reverse=reverse), want)


def test_lengths_all_full_match_none(module) -> None:
    gru = make(4, 10)
    x, h0 = torch.randn(5, 3, 4), torch.randn(3, 10)
    full = infer(x, h0, *weights(gru), torch.tensor([5, 9, 5]))
    assert_close(full, reference(gru, x, h0))


def test_non_contiguous_inputs(module, level: str) -> None:
    gru = make(12, 33)
    x = torch.randn(4, 6, 12).transpose(0, 1)  # (T, B, D) view of a batch-first tensor
    h0 = torch.randn(33, 4).t()
    w_ih, w_hh, b_ih, b_hh = weights(gru)
    w_ih_t = w_ih.detach().t().contiguous().t()  # same values, column-major
    w_hh_t = w_hh.detach().t().contiguous().t()
    b_ih_s = torch.stack([b_ih.detach(), b_ih.detach()], 1)[:, 0]  # stride 2
    assert not (x.is_contiguous() or h0.is_contiguous() or w_ih_t.is_contiguous() or b_ih_s.is_contiguous())
    got = infer(x, h0, w_ih_t, w_hh_t, b_ih_s, b_hh.detach(), mode="cols", threads=2)
    assert_close(got, reference(gru, x.contiguous(), h0.contiguous()))


def test_empty_sequence(module, level: str) -> None:
    gru = make(3, 8)
    h0 = torch.randn(2, 8)
    out, h_n = infer(torch.randn(0, 2, 3), h0, *weights(gru))
    assert out.shape == (0, 2, 8) and torch.equal(h_n, h0)


def test_cache_follows_in_place_changes(module) -> None:
    inference.clear_cache()
    gru = make(6, 21)
    x, h0 = torch.randn(5, 2, 6), torch.randn(2, 21)
    w_hh = gru.weight_hh_l0
    first = packed_weights(w_hh)
    assert packed_weights(w_hh) is first  # unchanged weight: no repacking
    with torch.no_grad():
        w_hh.add_(0.25)
        got = infer(x, h0, *weights(gru))
    assert packed_weights(w_hh) is not first
    assert_close(got, reference(gru, x, h0))
    # an optimizer step (in-place, under no_grad inside the optimizer)
    loss = gru(x, h0.unsqueeze(0))[0].square().sum()
    loss.backward()
    torch.optim.SGD(gru.parameters(), lr=0.5).step()
    with torch.no_grad():
        got = infer(x, h0, *weights(gru))
    assert_close(got, reference(gru, x, h0))
    # load_state_dict copies in place
    other = make(6, 21, seed=7)
    gru.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert_close(infer(x, h0, *weights(gru)), reference(other, x, h0))


@pytest.mark.parametrize("optimizer", [
    lambda p: torch.optim.Adam(p, lr=0.1, fused=True), lambda p: torch.optim.AdamW(p, lr=0.1, fused=True),
    lambda p: torch.optim.SGD(p, lr=0.5, fused=True),
])
def test_cache_sees_changes_that_skip_the_version_counter(module, optimizer) -> None:
    """Fused CPU optimizers write the weights without moving their version counter; so do writes through
    ``.data``. The no-grad forward after them is the new weights' (the cache compares the values)."""
    inference.clear_cache()
    gru = make(6, 21)
    x, h0 = torch.randn(5, 2, 6), torch.randn(2, 21)
    with torch.no_grad():
        infer(x, h0, *weights(gru))  # packs and caches W_hh
    gru(x, h0.unsqueeze(0))[0].square().sum().backward()
    optimizer(gru.parameters()).step()
    with torch.no_grad():
        assert_close(infer(x, h0, *weights(gru)), reference(gru, x, h0))
    gru.weight_hh_l0.data.mul_(0.5)
    with torch.no_grad():
        assert_close(infer(x, h0, *weights(gru)), reference(gru, x, h0))


def test_cache_is_per_tensor(module) -> None:
    """Two weights never share an entry, even if one is freed and the other takes its memory."""
    inference.clear_cache()
    a, b = make(3, 9, seed=1), make(3, 9, seed=2)
    x, h0 = torch.randn(4, 2, 3), torch.randn(2, 9)
    with torch.no_grad():
        assert_close(infer(x, h0, *weights(a)), reference(a, x, h0))
        assert_close(infer(x, h0, *weights(b)), reference(b, x, h0))
        w = a.weight_hh_l0.detach().clone()
        packed_weights(w)
        w_new = w.clone()
        w.copy_(w + 1)  # same tensor, new values: version moved
        assert torch.equal(packed_weights(w), inference.pack_weights(w))
        assert not torch.equal(packed_weights(w_new), packed_weights(w))


def test_cache_drops_freed_weights(module) -> None:
    inference.clear_cache()
    w = make(3, 9).weight_hh_l0.detach().clone()
    packed_weights(w)
    assert len(inference._CACHE) == 1
    del w
    assert len(inference._CACHE) == 0


def test_pack_layout() -> None:
    hidden = 18
    w_hh = torch.randn(3 * hidden, hidden)
    packed = inference.pack_weights(w_hh)
    assert packed.shape == (2, hidden, 3, 16) and packed.is_contiguous()
    for jb, k, g, i in [(0, 0, 0, 0), (1, 5, 2, 1), (0, 17, 1, 15), (1, 3, 0, 1)]:
        assert packed[jb, k, g, i] == w_hh[g * hidden + jb * 16 + i, k]
    assert bool((packed[1, :, :, 2:] == 0).all())  # units 18..31 do not exist


def test_refuses_what_it_cannot_do(module) -> None:
    gru = make(4, 6)
    x, h0 = torch.randn(3, 2, 4), torch.randn(2, 6)
    reason = unsupported_reason(x, h0, *weights(gru))
    assert reason is not None and "gradient" in reason
    with pytest.raises(ValueError, match="gradient"):
        gru_infer_scan(x, h0, *weights(gru))
    with torch.no_grad():
        assert unsupported_reason(x, h0, *weights(gru)) is None
        double = [w.double() for w in weights(gru)]
        assert "float32" in unsupported_reason(x.double(), h0.double(), *double)
        with pytest.raises(ValueError, match="float32"):
            gru_infer_scan(x.double(), h0.double(), *double)
        with pytest.raises(ValueError, match="shapes"):
            gru_infer_scan(x[:, :, :3], h0, *weights(gru))
        with pytest.raises(ValueError, match="lengths"):
            gru_infer_scan(x, h0, *weights(gru), torch.tensor([1, 2, 3]))
        with torch.autocast("cpu"):
            assert "autocast" in unsupported_reason(x, h0, *weights(gru))


def test_every_batch_size_takes_the_kernel(module, level: str) -> None:
    """Every path serves every batch size (no fallback to the training loop without AVX-512)."""
    gru = make(4, 6)
    with torch.no_grad():
        for batch in (1, 2, 3, 17, 64):
            x = torch.randn(3, batch, 4)
            assert unsupported_reason(x, torch.zeros(batch, 6), *weights(gru)) is None


def test_isa_switch(module, monkeypatch: pytest.MonkeyPatch) -> None:
    """GRU_LIB_ISA picks a path; an unknown value, or one this CPU cannot run, is refused in one line that
    names the variable; the kernel itself refuses a path above the CPU's."""
    best = isa.cpu_levels()[-1]
    monkeypatch.delenv(isa.ISA_ENV, raising=False)
    assert isa.selected() == best == inference.kernel_path()
    monkeypatch.setenv(isa.ISA_ENV, "portable")
    assert isa.selected() == "portable"
    with isa.forced(best):
        assert isa.selected() == best
    gru = make(4, 6)
    x, h0 = torch.randn(3, 2, 4), torch.zeros(2, 6)
    monkeypatch.setenv(isa.ISA_ENV, "sse9")
    with pytest.raises(GruLibError, match=r"^GRU_LIB_ISA='sse9': expected one of portable, avx2, avx512$"):
        infer(x, h0, *weights(gru))
    missing = [name for name in isa.LEVELS if name not in isa.cpu_levels()]
    if missing:  # the kernel checks the CPU itself too
        with pytest.raises(RuntimeError, match="cannot run instruction set"):
            module.forward(x, h0, *weights(gru)[:1], packed_weights(weights(gru)[1]), *weights(gru)[2:], None,
                           "rows", 1, isa.level_index(missing[0]), [0, 1])
    monkeypatch.setattr(isa, "cpu_levels", lambda: ("portable",))  # as on a CPU without AVX2
    monkeypatch.setenv(isa.ISA_ENV, "avx2")
    with pytest.raises(GruLibError, match="^GRU_LIB_ISA=avx2: this CPU cannot run it [(]it runs portable[)]$"):
        infer(x, h0, *weights(gru))
    with pytest.raises(GruLibError, match="^isa.forced=avx512: this CPU cannot run it"):
        with isa.forced("avx512"):
            pass


def test_extension_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.NO_EXTENSION_ENV, "1")
    gru = make(4, 6)
    with torch.no_grad():
        assert "unavailable" in unsupported_reason(torch.randn(2, 1, 4), torch.zeros(1, 6), *weights(gru))


def test_release_cached_buffers(module) -> None:
    """native.release_cached_buffers calls every loaded kernel's release, this one's included."""
    gru = make(4, 6)
    with torch.no_grad():
        infer(torch.randn(3, 2, 4), torch.zeros(2, 6), *weights(gru))
    native.release_cached_buffers()


def test_choose_mode() -> None:
    assert inference.choose_mode(1, 1) == "rows"  # one thread: no barrier
    assert inference.choose_mode(1, 2) == "cols"
    assert inference.choose_mode(7, 2) == "cols"
    assert inference.choose_mode(8, 2) == "rows"
    assert inference.choose_mode(16, 16) == "cols"


def test_disabled_declines_and_nests() -> None:
    """inference.disabled() makes fast_gru_scan keep its training loop's forward (chapter 6's ladder times it);
    the answer is the same function either way."""
    from gru_lib import inference
    from gru_lib.fast import fast_gru_scan

    torch.manual_seed(0)
    x, h0 = torch.randn(5, 2, 3), torch.randn(2, 4)
    w_ih, w_hh, b_ih, b_hh = torch.randn(12, 3), torch.randn(12, 4), torch.randn(12), torch.randn(12)
    args = (x, h0, w_ih, w_hh, b_ih, b_hh)
    with inference.disabled():
        with inference.disabled():
            assert inference.unsupported_reason(*args) == "disabled by gru_lib.inference.disabled()"
        assert inference.unsupported_reason(*args) is not None
        loop = fast_gru_scan(x, h0, None, w_ih, w_hh, b_ih, b_hh)
    if inference.unsupported_reason(*args) is None:
        kernel = fast_gru_scan(x, h0, None, w_ih, w_hh, b_ih, b_hh)
        for a, b in zip(loop, kernel):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_python_and_the_kernel_see_the_same_cpu(module) -> None:
    """gru_lib.isa reads the CPU's flags from /proc/cpuinfo, the kernels ask the compiler's runtime
    (__builtin_cpu_supports): both must name the same best path, or a forced path could be refused wrongly."""
    assert isa.LEVELS[module.cpu_isa()] == isa.cpu_levels()[-1]
