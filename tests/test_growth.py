"""Growth of a rank with n (lowrank issue 25, scaling): a saturating model beside the log and
the power law, residual patterns, "none fits", margins, at least five lengths; windows at
matched offsets and the position-shift ids."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lowrank.errors import LowrankError
from lowrank.maths.curves import curvature, fit_model, information
from lowrank.maths.growth import MIN_LENGTHS, growth_verdict, margin_text
from lowrank.maths.windows import matched_windows, shifted_positions

NS = np.array([32, 64, 128, 256, 512])
ISSUE_OUTPUT_RANK = np.array([6.79, 9.62, 12.37, 14.53, 16.26])  # MiniLM, d = 32


def _documents(means: np.ndarray, sd: float, docs: int = 16, seed: int = 0) -> np.ndarray:
    """(S, D) per-document values whose mean over documents is exactly ``means``."""
    noise = np.random.default_rng(seed).normal(0, sd, (len(means), docs))
    return means[:, None] + noise - noise.mean(axis=1, keepdims=True)


def _resamples(docs: int = 16, draws: int = 200, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, docs, (draws, docs))


def test_the_issues_output_rank_is_not_logarithmic_once_saturation_is_considered():
    from lowrank.families.scaling.fits import verdict

    values = _documents(ISSUE_OUTPUT_RANK, 0.3)
    old = verdict("output_rank", "model", tuple(NS), values, _resamples())
    assert old.label == "logarithmic"  # what scaling printed
    # the issue's quadratic term in ln n: -0.42
    assert curvature("log", NS, ISSUE_OUTPUT_RANK, None) == pytest.approx(-0.415, abs=0.005)
    new = growth_verdict(NS, values, _resamples(), bound=32)
    assert new.label == "saturating" and new.named == "saturating"
    log, sat = new.models["log"], new.models["saturating"]
    assert log.patterned and not log.adequate and log.curvature_interval[1] < 0
    assert 16.26 < sat.fit.params[0] <= 32 and sat.heldout < 0.05
    assert new.text().startswith("saturating toward C = ")
    assert any("excludes 0: residuals patterned" in line for line in new.evidence())


def test_a_fixed_cap_that_bends_the_wrong_way_leaves_none_that_fits():
    # the same numbers with the cap held at d = 32: ln(32 - y) still curves, so no model fits
    new = growth_verdict(NS, _documents(ISSUE_OUTPUT_RANK, 0.3), _resamples(), cap=32)
    assert new.label == "none fits" and new.named is None
    assert not any(a.adequate for a in new.models.values())
    assert new.text().startswith("none fits")


@pytest.mark.parametrize(
    ("means", "label"),
    [
        (2 + 3 * np.log(NS), "logarithmic"),
        (0.5 * NS**0.8, "power law"),
        (30 - 40 * NS**-0.5, "saturating"),
    ],
)
def test_exact_laws_are_recognised(means, label):
    v = growth_verdict(NS, _documents(means, 0.02), _resamples(), bound=64)
    assert v.label == label and v.named is not None
    assert v.models[v.named].heldout < 1e-3 and v.models[v.named].best_support >= 0.95


def test_noise_that_no_model_describes_is_none_fits():
    zigzag = np.array([10.0, 14.0, 9.0, 15.0, 11.0])
    v = growth_verdict(NS, _documents(zigzag, 0.5), _resamples(), bound=64)
    assert v.label == "none fits"
    assert all(a.heldout > 0.1 or a.patterned for a in v.models.values())


def test_models_that_all_fit_noisy_data_cannot_be_told_apart():
    v = growth_verdict(NS, _documents(2 + 3 * np.log(NS), 3.0), _resamples(), cap=64)
    assert v.label == "cannot tell" and sum(a.adequate for a in v.models.values()) >= 2
    assert v.text().startswith("cannot tell: ")


def test_fewer_than_five_lengths_are_refused():
    assert MIN_LENGTHS == 5
    with pytest.raises(LowrankError, match="at least 5 lengths"):
        growth_verdict(NS[:4], np.ones((4, 3)), _resamples(3))
    with pytest.raises(LowrankError, match="ascending"):
        growth_verdict(NS[::-1], np.ones((5, 3)), _resamples(3))


def test_margins_are_printed_and_recorded():
    assert margin_text(0.0996, 0.10) == "9.96% vs the 10% cut (0.04 points inside)"
    assert margin_text(0.125, 0.10) == "12.50% vs the 10% cut (2.50 points outside)"
    v = growth_verdict(NS, _documents(ISSUE_OUTPUT_RANK, 0.3), _resamples(), bound=32)
    rec = v.record()
    assert rec["verdict"] == "saturating" and rec["criterion"] == "AIC"  # free cap: no AICc
    assert set(rec["models"]) == {"log", "power", "saturating"}
    assert rec["models"]["log"]["fits"] is False and "min_lengths" in rec["rule"]
    assert "held-out error" in v.evidence()[0] and "16 documents" in v.evidence()[-1]


def test_fits_and_information_by_hand():
    f = fit_model("log", NS, 2 + 3 * np.log(NS))
    assert f.params == pytest.approx((2, 3)) and f.free == 2
    p = fit_model("power", NS, 0.5 * NS**0.8)
    assert p.params == pytest.approx((0.5, 0.8), rel=1e-6)
    s = fit_model("saturating", NS, 30 - 40 * NS**-0.5, cap=30)
    assert s.params == pytest.approx((30, 40, 0.5), rel=1e-6) and s.free == 2
    aic, aicc = information(1.0, 5, 2)
    assert aic == pytest.approx(5 * math.log(0.2) + 6) and aicc == pytest.approx(aic + 24)
    assert information(1.0, 5, 3)[1] == math.inf  # AICc undefined: 4 parameters, 5 points
    assert math.isnan(curvature("saturating", NS, np.full(5, 40.0), 32))


# --- windows at matched offsets ---------------------------------------------------------------


def test_matched_windows_share_one_start_across_n_and_are_seeded():
    lengths = [100, 2000, 700, 40, 1500, 900]
    w = matched_windows(lengths, (64, 128, 512), count=4, seed=3, specials=2)
    again = matched_windows(lengths, (512, 64, 128), count=4, seed=3, specials=2)
    assert (w.documents == again.documents).all() and (w.starts == again.starts).all()
    assert set(w.documents) <= {1, 2, 4, 5} and w.qualified == 4  # 510 text tokens needed
    for n in w.ns:
        spans = w.spans(n)
        assert (spans[:, 0] == w.starts).all() and (spans[:, 1] - spans[:, 0] == n - 2).all()
        assert (spans[:, 1] <= np.asarray(lengths)[w.documents]).all()
    assert (w.starts > 0).any()  # not only the openings
    old = matched_windows(lengths, (64, 128, 512), count=4, seed=3, specials=2, policy="openings")
    assert (old.starts == 0).all() and old.record()["policy"] == "openings"


def test_several_windows_per_document_cover_its_strata():
    w = matched_windows([10_000], (32, 64), count=1, seed=0, per_document=4)
    room = 10_000 - 64 + 1
    assert (w.documents == 0).all() and len(w.starts) == 4
    assert [int(s * 4 // room) for s in w.starts] == [0, 1, 2, 3]
    assert w.record()["starts"] == w.starts.tolist()


def test_windows_refuse_what_cannot_be_cut():
    with pytest.raises(LowrankError, match="no document has"):
        matched_windows([10, 20], (32, 64), count=2)
    with pytest.raises(LowrankError, match="no room for text"):
        matched_windows([100], (2, 8), count=1, specials=2)


def test_shifted_positions_keep_the_tokens_and_move_the_ids():
    ids = shifted_positions(128, [384, 128], max_positions=512)
    assert sorted(ids) == [0, 128, 384]
    assert ids[384][0] == 384 and ids[384][-1] == 511 and len(ids[0]) == 128
    with pytest.raises(LowrankError, match=r"leave 0\.\.511"):
        shifted_positions(128, [400], max_positions=512)
