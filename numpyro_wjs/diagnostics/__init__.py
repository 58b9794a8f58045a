"""Diagnostics: mode hopping and image-sample scores (``modes``), chains that stray from
the others (``chains``), side-by-side comparison with NUTS (``comparison``) and plots
(``plots``).

``mode_hopping``, ``attach``, ``frechet_distance``, ``classifier_scores`` and
``stray_chains`` are re-exported here; ``comparison`` and ``plots`` (matplotlib) are
imported on demand.
"""

from numpyro_wjs.diagnostics.chains import stray_chains, warn_stray_chains
from numpyro_wjs.diagnostics.modes import attach, classifier_scores, frechet_distance, mode_hopping

__all__ = ["mode_hopping", "attach", "frechet_distance", "classifier_scores", "stray_chains", "warn_stray_chains"]
