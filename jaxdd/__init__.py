"""jaxdd: dataset distillation in JAX/Flax.

Public API: the model zoo (`get_model`), datasets (`load_dataset`), the synthetic set, the evaluation
protocol. The run driver is `jaxdd.run.run(config, workdir)`.
"""

from jaxdd.data import load as load_dataset
from jaxdd.errors import UserError
from jaxdd.eval_settings import EvalProtocol
from jaxdd.evaluation import Networks, evaluate_archs, evaluate_model
from jaxdd.models import get_model
from jaxdd.synthetic import SyntheticSet

__all__ = [
    "EvalProtocol",
    "Networks",
    "SyntheticSet",
    "UserError",
    "evaluate_archs",
    "evaluate_model",
    "get_model",
    "load_dataset",
]
