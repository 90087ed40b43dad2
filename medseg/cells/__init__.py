"""U-Net cell segmentation (Ronneberger et al. 2015): models, weight maps, instances, training.

Modules: model (unet2015, basicunet), predict (overlap-tile glue), weights (border weight map),
augment (elastic deformation), instances (CC + watershed), train/dataset, segment, evaluate,
report, io. Submodules import torch; importing this package does not.
"""

from __future__ import annotations
