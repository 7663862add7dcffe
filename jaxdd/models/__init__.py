"""The reference model zoo of DC/DSA/DM and the model-pool paper, as Flax linen modules (NHWC).

Public API: ``get_model(spec, *, num_classes, image_shape, conv)``, ``check_input_shape``,
``model_names``, ``uses_batch_norm``, ``ConvNetSpec``, ``ConvOptions`` (how convolutions are computed)
and the registry ``MODELS``. Every model maps ``x [B, H, W, C]`` to ``(logits [B, num_classes], out)``
with ``out['embedding']`` [B, D] and, for all but MLP, ``out['feature_map']`` [B, h, w, C]; see
``registry`` for the calling contract.
"""

from jaxdd.models.alexnet import AlexNet
from jaxdd.models.conv import ConvOptions
from jaxdd.models.convnet import ConvNet, ConvNetSpec
from jaxdd.models.lenet import LeNet
from jaxdd.models.mlp import MLP
from jaxdd.models.registry import MODELS, check_input_shape, get_model, model_names, uses_batch_norm
from jaxdd.models.resnet import ResNet18
from jaxdd.models.vgg import VGG11

__all__ = [
    "MLP",
    "MODELS",
    "VGG11",
    "AlexNet",
    "ConvNet",
    "ConvNetSpec",
    "ConvOptions",
    "LeNet",
    "ResNet18",
    "check_input_shape",
    "get_model",
    "model_names",
    "uses_batch_norm",
]
