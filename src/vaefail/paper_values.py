"""The paper's own numbers (appendix L and section 2.2), keyed as our tidy tables key cells.

(table, row, column) -> (mean, sd).  Only cells the paper reports appear here.
"""

PAPER = {
    # Table 1: smooth kNN statistic, learned vs true p(x); lower is better.
    ("table1", "Clusters", "IWAE"): (0.057, 0.028),
    ("table1", "Clusters", "LIN"): (0.347, 0.057),
    ("table1", "Clusters", "VAE"): (0.361, 0.083),
    ("table1", "Figure-8", "IWAE"): (0.036, 0.013),
    ("table1", "Figure-8", "LIN"): (0.040, 0.081),
    ("table1", "Figure-8", "VAE"): (0.066, 0.014),
    # Table 2: 5-D embeddings; K = 1 is the ground truth.
    ("table2", "VAE test -ELBO", "Figure-8 K=1"): (-0.127, 0.057),
    ("table2", "VAE test -ELBO", "Figure-8 K=2"): (-0.260, 0.040),
    ("table2", "VAE test -ELBO", "Figure-8 K=3"): (-0.234, 0.050),
    ("table2", "VAE test -ELBO", "Clusters K=1"): (4.433, 0.049),
    ("table2", "VAE test -ELBO", "Clusters K=2"): (4.385, 0.034),
    ("table2", "VAE test -ELBO", "Clusters K=3"): (4.377, 0.024),
    ("table2", "VAE test avg_i I(x; z_i)", "Figure-8 K=1"): (2.419, 0.027),
    ("table2", "VAE test avg_i I(x; z_i)", "Figure-8 K=2"): (1.816, 0.037),
    ("table2", "VAE test avg_i I(x; z_i)", "Figure-8 K=3"): (1.296, 0.064),
    ("table2", "VAE test avg_i I(x; z_i)", "Clusters K=1"): (1.530, 0.011),
    ("table2", "VAE test avg_i I(x; z_i)", "Clusters K=2"): (1.425, 0.019),
    ("table2", "VAE test avg_i I(x; z_i)", "Clusters K=3"): (1.077, 0.105),
    ("table2", "IWAE test -ELBO", "Figure-8 K=1"): (-0.388, 0.044),
    ("table2", "IWAE test -ELBO", "Figure-8 K=2"): (-0.364, 0.051),
    ("table2", "IWAE test -ELBO", "Figure-8 K=3"): (-0.351, 0.045),
    ("table2", "IWAE test -ELBO", "Clusters K=1"): (4.287, 0.047),
    ("table2", "IWAE test -ELBO", "Clusters K=2"): (4.298, 0.054),
    ("table2", "IWAE test -ELBO", "Clusters K=3"): (4.295, 0.049),
    ("table2", "IWAE test avg_i I(x; z_i)", "Figure-8 K=1"): (2.159, 0.088),
    ("table2", "IWAE test avg_i I(x; z_i)", "Figure-8 K=2"): (1.910, 0.035),
    ("table2", "IWAE test avg_i I(x; z_i)", "Figure-8 K=3"): (1.605, 0.087),
    ("table2", "IWAE test avg_i I(x; z_i)", "Clusters K=1"): (1.269, 0.052),
    ("table2", "IWAE test avg_i I(x; z_i)", "Clusters K=2"): (1.321, 0.033),
    ("table2", "IWAE test avg_i I(x; z_i)", "Clusters K=3"): (1.135, 0.110),
    # Section 2.2, Spiral-Dots (true sigma^2 = 0.01), 5 trials.
    ("theorem2", "sigma^2 by eq. 5 for the best fixed-sigma^2 VAE", "Spiral-Dots"): (0.014, 0.001),
    ("theorem2", "sigma^2 learned jointly with (theta, phi)", "Spiral-Dots"): (0.020, 0.003),
}
