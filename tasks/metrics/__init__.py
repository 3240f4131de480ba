"""Quality metrics for reader studies: agreement between readers, segmentation overlap and surface
distance, binary diagnostic accuracy, detection matching and FROC. numpy and scipy only; one module
each (agreement, segmentation, accuracy, detection), all named here.

Conventions shared by every function:
- A value that is undefined for the data given is NaN, never an exception: kappa or alpha when
  chance agreement is total (every rating in one category) or nothing is paired, a rate whose
  denominator is zero, ROC AUC with one class, a FROC with no reference finding.
- Malformed input raises ValueError: shapes that differ, a rating outside ``categories``, a box
  whose far corner lies before its near one.
- Masks are arrays of any shape; nonzero is inside. Spacing is in millimetres, one value per array
  axis (a single number means isotropic).
- Categorical ratings may be strings or numbers; ``categories`` fixes their order, and a category
  nobody used still counts (in kappa's weights and expected-agreement matrix).
"""

from tasks.metrics.accuracy import bootstrap_ci, roc_auc, sensitivity_specificity  # noqa: F401
from tasks.metrics.agreement import ALPHA_LEVELS, KAPPA_WEIGHTS, cohen_kappa, fleiss_kappa, krippendorff_alpha  # noqa: F401
from tasks.metrics.detection import LUNA16_FPS_PER_SCAN, froc, match_detections  # noqa: F401
from tasks.metrics.segmentation import average_surface_distance, dice, hausdorff, jaccard  # noqa: F401
