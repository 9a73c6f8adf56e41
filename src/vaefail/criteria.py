"""The numbers that turn the paper's words into inequalities, each with its reason: read by
the analyses that measure a claim and by the claims table that scores it.  No torch."""

# Theorem 1's condition (1), "difficult to approximate by a MFG for a large portion of x's":
# at least this share of test points with posterior mass off the main mode.
LARGE_PORTION = 0.1
# f(y, z) has collapsed to one function of z when the label separation falls below this
# fraction of the ground truth's (Figures 2, 18: "nearly identical functions").
COLLAPSED_FRACTION = 0.25
# "IWAE does not prefer K > 1": its test bound at K = 1 may trail a larger K by at most this
# (nats per point; about the paper's own sd of Table 2's cells).
K_MARGIN = 0.05
# "IWAE learns p(x|y) no better than VAE and LIN": its kNN statistic may be lower (better)
# than theirs by at most one unit, the statistic's standard deviation under the null.
NO_BETTER_MARGIN = 1.0
# Appendix F's rotated models have the true model's p(x) exactly: equal up to float64 rounding.
EQUAL_LOG_PX = 1e-6
# The attack budget (in units of the true sigma) at which appendix K's claims compare projections.
ATTACK_BUDGET_IN_SIGMA = 2.0
