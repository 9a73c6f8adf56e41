"""What the tests check the package against: the float64 numpy/scipy reference of the
smooth kNN statistic and KSG (metrics), and a timing of the batched metrics against it
(benchmark)."""
