"""vaefail: reproduction of Yacoby, Pan & Doshi-Velez (2020), "Failures of Variational
Autoencoders and their Effects on Downstream Tasks".  See README.md.

A regular package (not a namespace package), so that the first `src` on the path wins
whole: the workflow puts this checkout's `src` first, and no other vaefail on the path
(another checkout, an installed copy) can supply some of its modules.
"""
