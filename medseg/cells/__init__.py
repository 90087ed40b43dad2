"""U-Net cell segmentation (Ronneberger et al. 2015): models, weight maps, instances, training.

Modules: model (unet2015, basicunet, ``load_model``), predict (engine Predictor behind overlap-tile
inference), weights (border weight map), augment (elastic deformation), instances (CC + watershed),
train (the TrainTask for the shared trainer) / dataset, segment, evaluate, report, io. Inference
(segment, predict, model) never imports training code. Submodules import torch; this package does not.
"""

from __future__ import annotations
