"""What a run directory records of the campaign's parameters."""

import json
import math
from pathlib import Path

from steersman import BaseThinker, PipeQueues, agent
from steersman.campaign.rundir import to_json


class Quick(BaseThinker):
    @agent
    def nothing(self) -> None:
        pass


def test_save_params_records_paths_as_text_and_numbers_strictly(tmp_path: Path) -> None:
    thinker = Quick(PipeQueues(), run_dir=tmp_path / "run", progress=False)
    thinker.save_params(data=tmp_path / "data.csv", rate=0.5, missing=math.nan)
    thinker.run()
    params = json.loads((tmp_path / "run" / "params.json").read_text())["params"]
    assert params["data"] == str(tmp_path / "data.csv")
    assert params["rate"] == 0.5 and params["missing"] is None


def test_to_json_is_strict_and_keeps_plain_data_as_is() -> None:
    assert to_json({"a": [1, 2.5, "x"]}) == '{"a":[1,2.5,"x"]}'
    assert json.loads(to_json({"nan": math.inf, "obj": object()}))["nan"] is None
