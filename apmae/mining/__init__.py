"""Stage 1, mining: Java sources -> completion scenarios (a :class:`ScenarioSet`).

- :mod:`apmae.mining.sources`: Java files from a directory, an archive, JSONL/Parquet or a dataset name;
- :mod:`apmae.mining.tasks`: the completion tasks (tree-sitter queries and token patterns);
- :mod:`apmae.mining.offsets`: character and UTF-8 byte offsets;
- :mod:`apmae.mining.fim`: the fill-in-the-middle prompt format;
- :mod:`apmae.mining.settings`: :class:`MiningConfig`, every setting that decides a mined set;
- :mod:`apmae.mining.miner`: the miner (tokenize, cut holes, exactly S tokens);
- :mod:`apmae.mining.scenario_set`: the mined set, its splits and its file format.
"""

from apmae.mining.miner import mine_scenarios
from apmae.mining.scenario_set import ScenarioSet
from apmae.mining.settings import MiningConfig
from apmae.mining.sources import JavaSources
from apmae.mining.tasks import get_tasks, register_task, task_names

__all__ = ["JavaSources", "MiningConfig", "ScenarioSet", "get_tasks", "mine_scenarios", "register_task", "task_names"]
