"""configs/dm.py:dataset=fashion_mnist under its old name, kept while the study
configs/studies/dm_pool_fashion_mnist.py reloads it for every cell (its cells' recorded configs must not
change); use the family file.

  python -m jaxdd.main --config=configs/dm.py:dataset=fashion_mnist,ipc=10 --workdir=runs/dm_fmnist_ipc10
"""

from jaxdd.recipe import sibling


def get_config(arg: str = ""):
    return sibling(__file__, "dm.py:dataset=fashion_mnist" + (f",{arg}" if arg else ""))
