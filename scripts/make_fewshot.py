"""Regenerate evolkit/prompts/fewshot_*.json from the standard exemplars in the shared data folder.

The GSM8k 8-shot CoT exemplars (Wei et al. 2022, as shipped by lm-evaluation-harness, MIT) and the Minerva 4-shot MATH
exemplars (Lewkowycz et al. 2022, same source) are rewritten into evolkit's answer format: numbered steps ("Step k: ...")
and a final line "The answer is: X", which is what the SFT data teaches and the answer checker reads first.
"""

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evolkit.settings import data_dir  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "evolkit" / "prompts"


def gsm8k() -> list[dict]:
    src = json.loads((data_dir() / "prompts" / "gsm8k_cot_8shot.json").read_text())
    out = []
    for ex in src["exemplars"]:
        body, ans = re.match(r"(.*)The answer is (.*)\.\s*$", ex["target"], re.S).groups()
        sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", body.strip()) if s.strip()]
        steps = [f"Step {i}: {s}" for i, s in enumerate(sents, 1)]
        out.append({"question": ex["question"], "solution": "\n".join(steps) + f"\nThe answer is: {ans.strip()}"})
    return out


def minerva() -> list[dict]:
    src = json.loads((data_dir() / "prompts" / "minerva_math_4shot.json").read_text())
    out = []
    for ex in src["exemplars"]:
        sol, final = ex["solution"].split("\nFinal Answer: The final answer is ")
        ans = final.rsplit(". I hope it is correct.", 1)[0].strip().strip("$")
        paras = [p.strip() for p in re.split(r"(?<=[.])\s+(?=[A-Z])(?![^$]*\$)", sol.strip()) if p.strip()]
        steps = [f"Step {i}: {p}" for i, p in enumerate(paras, 1)]
        out.append({"question": ex["problem"].strip(), "solution": "\n".join(steps) + f"\nThe answer is: {ans}"})
    return out


if __name__ == "__main__":
    for name, rows, origin in [
        ("fewshot_gsm8k.json", gsm8k(), "GSM8k 8-shot CoT exemplars (Wei et al. 2022) via EleutherAI/lm-evaluation-harness, MIT"),
        ("fewshot_math.json", minerva(), "Minerva 4-shot MATH exemplars (Lewkowycz et al. 2022) via EleutherAI/lm-evaluation-harness, MIT"),
    ]:
        (OUT / name).write_text(json.dumps({"origin": origin, "exemplars": rows}, indent=1, ensure_ascii=False) + "\n")
        print(name, len(rows))
