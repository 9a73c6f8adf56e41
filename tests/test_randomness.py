"""The counter-based generator: the cipher's known answers, the distributions' statistics, and
independence between members and purposes."""
import math

import pytest
import torch
from scipy import stats

from vaefail import randomness
from vaefail.randomness import MemberStreams, philox4x32

KNOWN_ANSWERS = [
    # Random123's tests/kat_vectors, the three "philox4x32 10" lines
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_matches_the_known_answers_of_random123(counter, key, expected):
    out = philox4x32([torch.tensor([c]) for c in counter], [torch.tensor([k]) for k in key])
    assert [int(w) for w in out] == expected


def test_normal_draws_have_standard_normal_moments_and_pass_a_ks_test():
    z = MemberStreams([7]).normal("noise", (0,), (200_000,), torch.float64)[0].numpy()
    n = len(z)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_uniform_draws_pass_a_ks_test_and_stay_inside_the_open_interval():
    u = MemberStreams([8]).uniform("init", (), (200_000,), torch.float64)[0]
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3


def test_members_and_purposes_are_uncorrelated():
    streams = MemberStreams([1, 2, 3])
    n = 100_000
    bound = 5 / math.sqrt(n)
    draws = streams.normal("noise", (0,), (n,), torch.float64)
    other_purpose = streams.normal("lin-noise", (0,), (n,), torch.float64)
    other_index = streams.normal("noise", (1,), (n,), torch.float64)
    other_phase = streams.child("eval").normal("noise", (0,), (n,), torch.float64)
    pairs = [(draws[0], draws[1]), (draws[1], draws[2]), (draws[0], other_purpose[0]),
             (draws[0], other_index[0]), (draws[0], other_phase[0]),
             (draws[0, :-1], draws[0, 1:])]          # lag-1 within a stream
    for a, b in pairs:
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < bound


def test_a_members_numbers_do_not_depend_on_the_other_members():
    batch = MemberStreams([11, 12, 13])
    alone = MemberStreams([12])
    assert torch.equal(batch.normal("noise", (3, 1), (4, 5))[1:2], batch[1].normal("noise", (3, 1), (4, 5)))
    assert torch.equal(batch.normal("noise", (3, 1), (4, 5))[1], alone.normal("noise", (3, 1), (4, 5))[0])
    assert torch.equal(batch.permutation("shuffle", (0,), 50)[1], alone.permutation("shuffle", (0,), 50)[0])


def test_the_same_request_gives_the_same_numbers_and_a_different_one_does_not():
    streams = MemberStreams([5])
    a = streams.normal("noise", (2,), (1000,))
    assert torch.equal(a, MemberStreams([5]).normal("noise", (2,), (1000,)))
    assert not torch.equal(a, streams.normal("noise", (3,), (1000,)))
    assert not torch.equal(a, MemberStreams([6]).normal("noise", (2,), (1000,)))
    # a prefix of a longer draw: element i depends only on its position
    assert torch.equal(a, streams.normal("noise", (2,), (3000,))[:, :1000])


def test_permutations_are_permutations_and_place_each_element_uniformly():
    n, members = 7, 4000
    perms = MemberStreams(range(members)).permutation("shuffle", (0,), n)
    assert torch.equal(perms.sort(1).values, torch.arange(n).expand(members, n))
    # where element 0 lands, over many independent members: uniform on n positions
    position = (perms == 0).long().argmax(1)
    counts = torch.bincount(position, minlength=n).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3


def test_randint_covers_its_range_uniformly():
    draws = MemberStreams([3]).randint("labels", (), 5, (50_000,))[0]
    assert int(draws.min()) == 0 and int(draws.max()) == 4
    assert stats.chisquare(torch.bincount(draws, minlength=5).numpy()).pvalue > 1e-3


def test_bad_seeds_are_refused_with_their_value():
    with pytest.raises(ValueError, match="-1"):
        MemberStreams([-1])


@pytest.mark.parametrize("offset, n", [(0, 7), (1, 6), (5, 1), (10, 11)])
def test_a_slice_of_a_stream_drawn_on_its_own_equals_the_slice_of_the_whole(offset, n):
    streams = MemberStreams([4, 9])
    whole_normal = streams.normal("eval", (2,), (40,), torch.float64)
    whole_uniform = streams.uniform("eval", (2,), (40,), torch.float64)
    assert torch.equal(streams.normal("eval", (2,), (n,), torch.float64, offset=offset),
                       whole_normal[:, offset:offset + n])
    assert torch.equal(streams.uniform("eval", (2,), (n,), torch.float64, offset=offset),
                       whole_uniform[:, offset:offset + n])


# --- the compiled path (torch.compile) gives the eager path's bits ---------------------------
@pytest.fixture
def fresh_backend(monkeypatch):
    """A backend of its own for the test (no compiled kernels, no failure), restored after."""
    backend = randomness._Backend()
    monkeypatch.setattr(randomness, "_backend", backend)
    return backend


def _compiled_or_skip():
    if randomness._backend.failed:
        pytest.skip("torch.compile is not available here (the eager path was used)")


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_the_fused_philox_kernel_matches_the_known_answers_eagerly_and_compiled(counter, key, expected):
    keys = randomness.round_keys(torch.tensor([key]))
    position = counter[0] | (counter[1] << 32)          # the block number: int64 bits, so maybe < 0
    position = torch.tensor([position - 2 ** 64 if position >= 2 ** 63 else position])
    stream = torch.tensor(counter[2:])
    assert [int(w) for w in randomness._philox_blocks(keys, position, stream)] == expected
    out = randomness._backend.run_blocks(randomness._philox_blocks, keys, position, stream)
    _compiled_or_skip()
    assert [int(w) for w in out] == expected


def test_compiled_and_eager_draws_are_the_same_bits():
    streams = MemberStreams([1, 2 ** 64 - 1, 12345])
    requests = [("normal", ("noise", (4,), (100, 20, 1), torch.float32)),
                ("normal", ("noise", (4, 1), (40_001,), torch.float64, 3)),      # compiled products too
                ("normal", ("noise", (5,), (1,), torch.float32, 7)),
                ("uniform", ("init", (), (999,), torch.float64, 1)),
                ("randint", ("labels", (), 7, (301,))),
                ("permutation", ("shuffle", (0,), 5000)),
                ("permutation", ("shuffle", (1,), 1)),
                ("permutation", ("shuffle", (2,), 4501))]
    for rows in ([0, 1, 2], [1]):
        sub = streams[rows]
        with randomness.backend("eager"):
            eager = [getattr(sub, name)(*args) for name, args in requests]
        with randomness.backend("compiled"):
            compiled = [getattr(sub, name)(*args) for name, args in requests]
        _compiled_or_skip()
        for (name, args), a, b in zip(requests, eager, compiled):
            assert a.dtype == b.dtype and torch.equal(a, b), (name, args, rows)


def test_new_shapes_do_not_recompile_the_kernels():
    from torch._dynamo.utils import counters
    with randomness.backend("compiled"):
        def draw_all(members, n):
            streams = MemberStreams(range(members))
            streams.normal("noise", (n,), (n, 3), torch.float32)
            streams.normal("noise", (n,), (20_000 + n,), torch.float32)
            streams.uniform("init", (n,), (n,), torch.float64)
            streams.permutation("shuffle", (n,), n)
        draw_all(4, 10)
        _compiled_or_skip()
        before = counters["stats"]["unique_graphs"]
        for members, n in [(1, 1), (2, 2), (20, 20), (7, 333), (1, 4096), (50, 3)]:
            draw_all(members, n)
    assert counters["stats"]["unique_graphs"] == before


def test_a_failed_compile_falls_back_to_the_eager_path(fresh_backend, monkeypatch, caplog):
    streams = MemberStreams([3, 4])
    expected = streams.normal("noise", (0,), (50,)), streams.permutation("shuffle", (0,), 77)

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(torch, "compile", broken_compile)
    fresh_backend.set("compiled")
    got = streams.normal("noise", (0,), (50,)), streams.permutation("shuffle", (0,), 77)
    assert fresh_backend.failed and "no C++ compiler" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_auto_compiles_once_enough_blocks_were_drawn_eagerly(fresh_backend, monkeypatch):
    monkeypatch.setattr(randomness, "COMPILE_AFTER_BLOCKS", 100)
    cpu = torch.device("cpu")
    assert [fresh_backend.wants_compiled(cpu, 60) for _ in range(3)] == [False, False, True]
    assert not fresh_backend.wants_compiled(torch.device("meta"), 10)   # other devices: eager
    fresh_backend.set("eager")
    assert not fresh_backend.wants_compiled(cpu, 10)
    with pytest.raises(ValueError, match="fast"):
        fresh_backend.set("fast")


def test_environment_variable_names_a_backend():
    assert randomness.BACKEND_ENV == "VAEFAIL_RNG" and randomness._backend.mode in randomness.BACKENDS


# --- permutations by a sort of composites ------------------------------------------------------
def test_argsort_of_composites_equals_the_stable_argsort_or_names_the_row_unsure():
    gen = torch.Generator().manual_seed(0)
    n, bits = 300, randomness.index_bits(300)
    keys = torch.randint(0, 2 ** 62, (40, n), generator=gen)
    keys[:10] = torch.randint(0, 4, (10, n), generator=gen) << 61          # many ties in the high bits
    keys[10:20, 5] = keys[10:20, 200]                                      # exact ties
    keys[20:25, 7] = keys[20:25, 9] ^ 1                                    # equal but for the lowest bit
    order, unsure = randomness.argsort_composites(randomness._composite(keys, bits, torch.arange(n)), bits)
    reference = torch.argsort(keys, dim=1, stable=True)
    sure = sorted(set(range(40)) - set(unsure.tolist()))
    assert set(range(25)) <= set(unsure.tolist()) and len(sure) == 15
    assert torch.equal(order[sure], reference[sure])


def test_permutations_with_unsure_rows_are_sorted_again_from_the_full_keys(monkeypatch):
    streams = MemberStreams([1, 2, 3])
    expected = torch.argsort(streams._sort_keys("shuffle", (0,), 500), dim=1, stable=True)
    monkeypatch.setattr(randomness, "index_bits", lambda n: 61)    # 2 high bits left: ties everywhere
    for mode in ("eager", "compiled"):
        with randomness.backend(mode):
            assert torch.equal(streams.permutation("shuffle", (0,), 500), expected)
