"""Break each formula on purpose and check that the test suite notices (a test that cannot fail is a defect).

    python experiments/mutation_check.py            # every mutation, against the tests that should catch it
    python experiments/mutation_check.py --list     # what is broken, and where

Each mutation replaces one exact snippet of the source (it must occur exactly once, else it is reported
as stale), runs the given tests, records CAUGHT (some test failed) or SURVIVED, and restores the file.
Results go to outputs/mutation_check/results.md. Keep the list in step with the code: a stale pattern is
reported, not silently skipped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    title: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


AMORTIZED_TESTS = ("tests/test_amortized.py", "-m", "not slow")
AMORTIZED_SLOW = ("tests/test_amortized.py", "-m", "slow", "-k")
AMORTIZED = [  # scope=amortized (advwm/attacks/amortized.py, generator.py, run_files/generator_file.py)
    Mutation("amortized: delta without tanh's bound", "advwm/attacks/generator.py",
             "return self.eps * torch.tanh(self.gain * per_face_unit_rms(self.logits(x)))",
             "return self.eps * (self.gain * per_face_unit_rms(self.logits(x)))", AMORTIZED_TESTS),
    Mutation("amortized: x + delta not kept in [-1, 1]", "advwm/attacks/amortized.py",
             "return (x + self.generator(x)).clamp(-1.0, 1.0)", "return (x + self.generator(x))", AMORTIZED_TESTS),
    Mutation("amortized: faces' directions not scaled to unit rms", "advwm/attacks/amortized.py",
             "surrogate = -(protected * unit_rms(direction.detach())", "surrogate = -(protected * (direction.detach())",
             AMORTIZED_TESTS),
    Mutation("amortized: the weights descend the victims' loss", "advwm/attacks/amortized.py",
             "surrogate = -(protected * unit_rms", "surrogate = (protected * unit_rms", AMORTIZED_TESTS),
    Mutation("amortized: a NaN or infinite output normalised to NaN", "advwm/attacks/generator.py",
             "    z = torch.nan_to_num(z)\n", "", AMORTIZED_TESTS),
    Mutation("amortized: generator.pt's weight shapes unchecked", "advwm/run_files/generator_file.py",
             "        if value.shape != expected[name].shape:", "        if False:", AMORTIZED_TESTS),
    Mutation("amortized: the generator under the victims' bf16", "advwm/attacks/amortized.py",
             "            self._current = (iteration, self.protect(iteration.x))",
             "            with self.victim_precision():\n"
             "                self._current = (iteration, self.protect(iteration.x))",
             AMORTIZED_TESTS),
    Mutation("amortized: gradients not all-reduced under DDP", "advwm/attacks/amortized.py",
             "        self.manual_backward(surrogate)", "        surrogate.backward()", (*AMORTIZED_SLOW, "ddp")),
    Mutation("amortized: Adam's moments lost on resume", "advwm/attacks/amortized.py",
             "    def configure_optimizers(self) -> Optimizer:",
             "    def on_load_checkpoint(self, checkpoint: dict) -> None:\n"
             "        super().on_load_checkpoint(checkpoint)\n"
             "        checkpoint['optimizer_states'][0]['state'] = {}\n\n"
             "    def configure_optimizers(self) -> Optimizer:",
             (*AMORTIZED_SLOW, "resumed")),
    Mutation("amortized: a generator checkpoint checked as a perturbation", "advwm/run_files/resume.py",
             "    return {k: v for k, v in state.items() if isinstance(k, str) and k.startswith(GENERATOR_PREFIX)}",
             "    return {}", (*AMORTIZED_SLOW, "resumed and one-step-a-batch-inside-an-epoch")),
    Mutation("amortized: NaN generator weights resumed", "advwm/run_files/resume.py",
             "            return f\"its generator weight {name} holds NaN or infinite values\"", "            pass",
             (*AMORTIZED_SLOW, "damaged_generator")),
]
ENGINE = ("tests/test_engine.py", "tests/test_steps.py", "tests/test_aggregators.py", "tests/test_regularizers.py")
MUTATIONS = [
    Mutation("CMUA fused step re-signed in mean mode", "advwm/attacks/scopes.py",
             'return self.fused_step == "sign" or self.batch_reduction != "sign_mean"', "return True", ENGINE),
    Mutation("CMUA fused step not re-signed in sign mode", "advwm/attacks/scopes.py",
             'return self.fused_step == "sign" or self.batch_reduction != "sign_mean"',
             'return self.batch_reduction != "sign_mean"', ENGINE),
    Mutation("image-level fusion without the sign", "advwm/attacks/scopes.py",
             "return per_image_grads.sign().mean(dim=0, keepdim=True)",
             "return per_image_grads.mean(dim=0, keepdim=True)", ENGINE),
    Mutation("model-level blend weights swapped", "advwm/attacks/aggregators/cmua.py",
             "return self.alpha * watermark + (1.0 - self.alpha) * proposal",
             "return (1.0 - self.alpha) * watermark + self.alpha * proposal", ENGINE),
    Mutation("HiSD start clamped in the released loop", "advwm/attacks/reference.py",
             "current = x_nat + up if up is not None else x_nat.clone()",
             "current = (x_nat + up).clamp(-1, 1) if up is not None else x_nat.clone()",
             ("tests/test_cmua_reference.py",)),
    Mutation("eta from image 0 instead of the batch mean", "advwm/attacks/reference.py",
             ".clamp(-eps, eps).mean(dim=0, keepdim=True)", ".clamp(-eps, eps)[:1]",
             ("tests/test_cmua_reference.py", "tests/test_engine.py")),
    Mutation("no random restart in the released loop", "advwm/attacks/reference.py",
             "current = x_nat + draw(x_nat)", "current = x_nat.clone()",
             ("tests/test_cmua_reference.py", "tests/test_engine.py")),
    Mutation("DI2 without its random resize", "advwm/attacks/diversity.py",
             "rh = self._randint(height, h_max - 1, generator)  # [H, H * rate)",
             "rh = height; self._randint(height, h_max - 1, generator)", ENGINE),
    Mutation("DI2 drawn once per chunk", "advwm/attacks/diversity.py",
             "return self.diversity.apply(chunk, [self.draws[k][b] for k, b in pairs])",
             "return self.diversity.apply(chunk, [self.draws[pairs[0][0]][pairs[0][1]]] * len(pairs))", ENGINE),
    Mutation("BIM starts like PGD", "advwm/attacks/steps.py",
             "step_size: float = 0.01, start_radius: float = IFGSM_START_RADIUS",
             "step_size: float = 0.01, start_radius: float | None = None", ENGINE),
    Mutation("BIM config starts like PGD", "conf/attack/ifgsm.yaml", "start_radius: 0.001", "start_radius: ${eps}",
             ("tests/test_end_to_end.py::test_bim_and_pgd_rows_of_cmua_table_3_craft_different_watermarks",)),
    Mutation("APGD returns its last iterate", "advwm/attacks/steps.py", '                p.copy_(state["best"])',
             "                pass", ENGINE),
    Mutation("penalty zeta 0.01", "advwm/attacks/regularizers.py", "def __init__(self, zeta: float = 1e-8) -> None:",
             "def __init__(self, zeta: float = 0.01) -> None:", ENGINE),
    Mutation("penalty zeta 0.01 in the config", "conf/regularizer/penalty.yaml", "zeta: 1.0e-8", "zeta: 0.01",
             ("tests/test_configs.py",)),
    Mutation("iterative modes count across batches", "advwm/attacks/scopes.py",
             "return repetition  # t restarts with every batch", "return iteration  # t restarts with every batch",
             ENGINE),
    Mutation("MGDA's two-point line search takes the wrong end", "advwm/attacks/min_norm.py",
             "return min(max((v22 - v12) / denom, 0.0), 1.0)", "return min(max((v11 - v12) / denom, 0.0), 1.0)",
             ("tests/test_aggregators.py",)),
    Mutation("MGDA's Frank-Wolfe moves towards the worst vertex", "advwm/attacks/min_norm.py",
             "t = min(range(j), key=g_alpha.__getitem__)", "t = max(range(j), key=g_alpha.__getitem__)",
             ("tests/test_aggregators.py",)),
    Mutation("CDMAA presets take the first faces", "conf/data/celeba_cdmaa.yaml", "sample: random", "sample: first",
             ("tests/test_configs.py",)),
    Mutation("resume restarts the data at the first batch", "advwm/data/base.py",
             "sampler.start = self._iterations_done() % max(len(sampler), 1)", "sampler.start = 0",
             ("tests/test_resume.py::test_a_resumed_run_equals_the_uninterrupted_one",)),
    Mutation("resume forgets the faces judged", "advwm/callbacks/evaluation.py",
             "        if not state_dict or self.judge is None:\n            return", "        return",
             ("tests/test_resume.py::test_a_resumed_run_equals_the_uninterrupted_one",)),
    Mutation("EOT sums its draws instead of averaging them", "advwm/attacks/eot.py",
             "count = float(self.samples)", "count = 1.0", ("tests/test_eot.py",)),
    Mutation("sharing transforms inherit the victims' bf16 autocast", "advwm/attacks/eot.py",
             "with torch.autocast(chunk.device.type, enabled=False):",
             "with torch.autocast(chunk.device.type, enabled=torch.is_autocast_enabled(chunk.device.type)):",
             ("tests/test_eot.py",)),
    Mutation("robust metrics compare with the fake of the unshared photo", "advwm/metrics/robustness.py",
             "fakes = clean_outputs(victim, shared_clean, conditions, micro)",
             "fakes = clean_outputs(victim, x, conditions, micro)", ("tests/test_robustness_metrics.py",)),
    Mutation("auto chunking ignores its memory margin", "advwm/attacks/chunking.py",
             "usable = available * (1.0 - margin)", "usable = available", ("tests/test_chunking.py",)),
    Mutation("an out-of-memory chunk is skipped, not rerun", "advwm/attacks/chunking.py",
             "                failed = stop - start\n            else:",
             "                failed = stop - start\n                start = stop\n            else:",
             ("tests/test_chunking.py",)),
    Mutation("U-GAT-IT's fused ILN swaps rho", "advwm/victims/ugatit.py",
             "scale = rho * s_i + (1 - rho) * s_l", "scale = (1 - rho) * s_i + rho * s_l",
             ("tests/test_victim_norms.py", "tests/test_victims_fixtures.py")),
    Mutation("bf16 distortion computed in bf16", "advwm/attacks/losses.py",
             "dtype = torch.promote_types(torch.promote_types(fake_protected.dtype, fake_clean.dtype), torch.float32)",
             "dtype = torch.promote_types(fake_protected.dtype, fake_clean.dtype)", ("tests/test_precision.py",)),
    # issue 16: what a careful reviewer of an attack paper would break
    Mutation("CMUA's first proposal blended with the random start", "advwm/attacks/aggregators/cmua.py",
             "proposal if first and j == 0 else self.blend(engine.perturbation, proposal)",
             "self.blend(engine.perturbation, proposal)", ("tests/test_engine.py",)),
    Mutation("'no fusion' keeps CMUA's image-level sign votes", "conf/fusion/none.yaml", "batch_reduction: mean",
             "batch_reduction: sign_mean", ("tests/test_configs.py",)),
    Mutation("Table 3's M-DI2-FGSM row runs MI-FGSM", "conf/method/universal_mdi2fgsm.yaml",
             "override /attack: mdi2fgsm", "override /attack: mifgsm", ("tests/test_configs.py",)),
    Mutation("M-DI2-FGSM without MI-FGSM's decay", "conf/attack/mdi2fgsm.yaml", "decay: 1.0", "decay: 0.0",
             ("tests/test_configs.py",)),
    Mutation("DI2-FGSM's probability halved", "conf/attack/di2fgsm.yaml", "prob: 0.5", "prob: 0.25",
             ("tests/test_configs.py",)),
    Mutation("CDMAA rows crafted universally", "conf/method/cdmaa_ifgsm_t80.yaml", "override /scope: per_image",
             "override /scope: universal", ("tests/test_configs.py",)),
    Mutation("SR_mask counts L2_mask at the threshold as a success", "advwm/metrics/sr_mask.py",
             "success = (~empty) & (l2 > self.threshold)", "success = (~empty) & (l2 >= self.threshold)",
             ("tests/test_metric_boundaries.py", "tests/test_sr_mask.py")),
    Mutation("the SR_mask mask takes pixels at the mask threshold", "advwm/metrics/sr_mask.py",
             ".abs().sum(dim=1) > mask_threshold)", ".abs().sum(dim=1) >= mask_threshold)",
             ("tests/test_metric_boundaries.py", "tests/test_sr_mask.py")),
    Mutation("attack_rate reads Ruiz's threshold", "advwm/metrics/success.py", "AttackRate(tau=thresholds.tau)",
             "AttackRate(tau=thresholds.ruiz_threshold)", ("tests/test_metric_boundaries.py",)),
    Mutation("EOT draws one transform per condition for all images", "advwm/attacks/eot.py",
             "[[[self.draw_one(generator) for _ in range(images)] for _ in range(conditions)]",
             "[[[self.draw_one(generator)] * images for _ in range(conditions)]", ("tests/test_eot.py",)),
    Mutation("EOT applies image 0's draw to every image", "advwm/attacks/eot.py",
             "torch.cat([self.draws[k][b](chunk[i:i + 1])", "torch.cat([self.draws[k][0](chunk[i:i + 1])",
             ("tests/test_eot.py",)),
    Mutation("per-image starts all from batch 0's generator", "advwm/attacks/scopes.py",
             "engine.base_attack.initialize(engine.start_generator(batch_number))",
             "engine.base_attack.initialize(engine.start_generator(0))", ("tests/test_per_image_rows.py",)),
    Mutation("per-image rows saved against the wrong names", "advwm/callbacks/export.py",
             'names = list(finished["name"])', 'names = list(finished["name"])[::-1]',
             ("tests/test_per_image_rows.py",)),
    Mutation("per-image delta not moved back into the image range", "advwm/attacks/scopes.py",
             "        engine.perturbation.data.copy_(engine.protect(x) - x)", "        pass",
             ("tests/test_per_image_rows.py",)),
    Mutation("protect adds the perturbation without clamping", "advwm/protect/paste.py",
             "protected = ((colour * 2.0 - 1.0) + delta).clamp(-1.0, 1.0).add(1.0).div(2.0)",
             "protected = ((colour * 2.0 - 1.0) + delta).add(1.0).div(2.0)",
             ("tests/test_per_image_rows.py",)),
    Mutation("HiSD's style code off by 1e-3 (a wrong reference or transform)", "advwm/victims/hisd.py",
             "return [row.unsqueeze(0).repeat(batch, 1) for row in self.condition_rows]",
             "return [(row + 1e-3).unsqueeze(0).repeat(batch, 1) for row in self.condition_rows]",
             ("tests/test_victims_fixtures.py", "tests/test_cmua_reference.py")),
    *AMORTIZED,
    # the reliability corpus (tests/corpus.py through tests/test_corpus.py)
    Mutation("protection.csv splits a name holding a carriage return", "advwm/protect/ledger.py",
             'lineterminator="\\r\\n")', 'lineterminator="\\n")', ("tests/test_corpus.py", "-k", "hostile")),
    Mutation("protect prints photo names' escape sequences raw", "advwm/protect/cli.py",
             "tqdm.write(console_text(line),", "tqdm.write(line,", ("tests/test_corpus.py", "-k", "hostile")),
    Mutation("a study storage that is not a URL passes the check", "advwm/studies.py",
             '    if "://" not in url:', '    if False:', ("tests/test_corpus.py", "-k", "storage")),
    Mutation("a held signal not delivered when crafting ends", "advwm/run_files/signals.py",
             "    if not holding and _state.pending is not None:", "    if False:",
             ("tests/test_corpus.py", "-k", "signal")),
]


def run(mutation: Mutation) -> tuple[str, list[str]]:
    path = REPO / mutation.path
    original = path.read_text()
    if original.count(mutation.old) != 1:
        return "STALE", [f"pattern found {original.count(mutation.old)} times"]
    path.write_text(original.replace(mutation.old, mutation.new))
    try:
        env = {**os.environ, "WANDB_MODE": "offline"}
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-W", "ignore",
                                 *mutation.tests], cwd=REPO, capture_output=True, text=True, env=env)
        failed = [line.split(" ")[1] for line in result.stdout.splitlines() if line.startswith("FAILED")]
        return ("CAUGHT" if result.returncode else "SURVIVED"), failed
    finally:
        path.write_text(original)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("-k", default="", help="only mutations whose title contains this")
    options = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if options.k in m.title]
    if options.list:
        for m in chosen:
            print(f"{m.title}: {m.path}")
        return 0
    lines = ["| mutation | outcome | failing test |", "|---|---|---|"]
    survived = 0
    for mutation in chosen:
        outcome, failed = run(mutation)
        survived += outcome != "CAUGHT"
        lines.append(f"| {mutation.title} | {outcome} | {failed[0] if failed else ''} |")
        print(lines[-1], flush=True)
    out = REPO / "outputs" / "mutation_check"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
