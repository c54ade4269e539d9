"""Distilled students (KD, PD, CD): targets, boundary condition, tiny distillations, shipped weights, unsupported cells."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import samplers
from samplers.schedules import VPLinear
from samplers.students import STUDENT_T_END, NoStudent, consistency_fn, kd_map

import pretrained
from pretrained import distill, students
from pretrained.nets import UNet
from pretrained.pins import PINNED_SHA256
from pretrained.weights import read_manifest

FIXTURE = Path(__file__).parent / "fixtures" / "students" / "samples.pt"
SAMPLE_SEED, SAMPLE_N = 7, 4
SAMPLE_CELLS = (("kd", 1), ("pd", 1), ("pd", 2), ("pd", 4), ("pd", 8), ("cd", 1), ("cd", 2), ("cd", 4))
SHIPPED = all(f"digits-{k}" in PINNED_SHA256 for k in ("kd", "pd", "cd"))
needs_weights = pytest.mark.skipif(not SHIPPED, reason="students not shipped yet (no pins)")


def tiny(seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet(channels=(8, 16))


def tiny_teacher(seed: int = 0):
    """A random tiny v-prediction UNet: its x0 = alpha x - sigma v stays bounded at T (a random eps net's does not)."""
    return distill.v_model(tiny(seed), "tiny-teacher")


# -- the targets and the boundary condition ---------------------------------------------------------------
def test_pd_target_is_two_teacher_ddim_steps():
    """One DDIM step with x0 = x~ lands where two DDIM steps of the teacher land (registry's DDIM, 2-step grid)."""
    teacher = tiny_teacher()
    sch = teacher.schedule
    z = samplers.initial_noise(3, range(6), (1, 8, 8))
    ts = samplers.time_grid(sch, "time_uniform", 2, STUDENT_T_END)
    n = len(z)
    target = distill.pd_target(teacher, z, ts[0].expand(n), ts[1].expand(n), ts[2].expand(n))
    student = samplers.DiffusionModel(lambda x, t: target, sch, "x0", data_shape=(1, 8, 8), net_dtype=torch.float64)
    one = samplers.get("ddim").sample(student, z, 1)
    two = samplers.get("ddim").sample(teacher, z, 2)
    torch.testing.assert_close(one, two, rtol=1e-9, atol=1e-9)
    # and it is not the one-step teacher (the test can tell a wrong target from a right one)
    assert (samplers.get("ddim").sample(teacher, z, 1) - two).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_consistency_boundary_condition_exact(dtype):
    f = distill.v_model(tiny(1), "cd")
    x = samplers.initial_noise(5, range(8), (1, 8, 8), dtype=dtype)
    assert torch.equal(consistency_fn(f, x, STUDENT_T_END), x)
    assert torch.equal(consistency_fn(f, x, torch.full((8,), STUDENT_T_END, dtype=torch.float64)), x)
    assert not torch.allclose(consistency_fn(f, x, 0.5), x)  # away from t_end the network counts


def test_kd_map_is_one_ddim_step_of_the_student():
    student = distill.v_model(tiny(2), "kd")
    x = samplers.initial_noise(5, range(4), (1, 8, 8))
    torch.testing.assert_close(kd_map(student, x), samplers.get("ddim").sample(student, x, 1), rtol=1e-9, atol=1e-9)


# -- tiny distillations through the recipes' code ---------------------------------------------------------------------
def _fit(tmp_path, net, loss_fn, eval_loss, steps=40):
    return distill.fit(tmp_path / "w", net, loss_fn, steps=steps, lr=3e-3, warmup=1, ema=0.0, clip=1.0, seed=0,
                       evaluate=lambda n: {"loss": eval_loss(n)}, select="loss", ckpt_every=20, eval_every=steps)


def _decreases(result):
    first, last = result["curve"][0][3], result["curve"][-1][3]
    assert last < 0.7 * first, result["curve"]


def test_tiny_kd(tmp_path):
    teacher = tiny_teacher()
    x_T, x_end = distill.kd_pairs(teacher, 100, 16, "dpm_solver++_3m", 6, STUDENT_T_END)
    x_T, x_end = x_T.float(), x_end.float()

    def loss(net, g=None, step=None):
        return distill.kd_loss(distill.v_model(net, "kd", grad=True), x_T, x_end, STUDENT_T_END)

    _decreases(_fit(tmp_path, tiny(3), loss, lambda n: loss(n).item()))


def test_tiny_pd(tmp_path):
    teacher = tiny_teacher()
    x0 = torch.rand(32, 1, 8, 8) * 2 - 1

    def loss(net, g, step=None):
        return distill.pd_loss(distill.v_model(net, "pd", grad=True), teacher, x0, 2, STUDENT_T_END, g)

    _decreases(_fit(tmp_path, tiny(4), loss, lambda n: loss(n, torch.Generator().manual_seed(9)).item()))


def test_tiny_cd(tmp_path):
    from pretrained.recipes.train_cd import TargetNetwork
    teacher, net = tiny_teacher(), tiny(5)
    target = TargetNetwork(net, 0.5)
    grid = distill.cd_grid(VPLinear(), 6, STUDENT_T_END)
    x0 = torch.rand(32, 1, 8, 8) * 2 - 1

    def loss(n, g, step=None):
        return distill.cd_loss(distill.v_model(n, "cd", grad=True), distill.v_model(target.net, "target"), teacher,
                               x0, grid, STUDENT_T_END, g)

    result = distill.fit(tmp_path / "w", net, loss, steps=30, lr=3e-3, warmup=1, ema=0.0, clip=1.0, seed=0,
                         evaluate=lambda n: {"loss": loss(n, torch.Generator().manual_seed(9)).item()}, select="loss",
                         ckpt_every=10, eval_every=30, after_step=target)
    _decreases(result)
    assert not torch.equal(target.net.conv_out.weight, tiny(5).conv_out.weight)  # the target network moved


@pytest.mark.parametrize("values, stop", [
    ([10.0, 9.0], False),                    # no more than k values: never
    ([10.0, 9.0, 9.0, 8.95], True),          # the last k = 2 gained 0.6 % < 1 %
    ([10.0, 9.0, 9.0, 8.9], False),          # 1.1 % > 1 %
    ([10.0, 9.0, 9.5, 9.4], True),           # worse than before: flat
    ([10.0, 9.0, 8.0, 12.0], False)])        # the best is recent
def test_plateau_rule(values, stop):
    assert distill.plateaued(values, 2, 0.01) is stop


def test_fit_stops_on_the_plateau_and_says_so(tmp_path):
    """Evaluations 5, 4, 4, 4, ... (every 2 steps): with k = 2 the run stops at the 4th evaluation (step 6), not at
    ``steps``; without patience it runs all steps."""
    scores = iter([5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0])
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1

    def loss(net, g, step):
        return distill.v_loss(net, VPLinear(), x0, g)

    opts = dict(lr=1e-3, warmup=1, ema=0.9, clip=1.0, seed=0, select="x", ckpt_every=2, eval_every=2)
    out = distill.fit(tmp_path / "a", tiny(1), loss, steps=20, evaluate=lambda n: {"x": next(scores)}, patience=2,
                      **opts)
    assert (out["steps_run"], out["stopped"], out["best_step"]) == (6, "plateau", 2)
    assert [r[0] for r in out["curve"]] == [0, 2, 4, 6] and "last 2 evaluations" in out["stopping_rule"]
    assert out["threads"] == 1
    full = distill.fit(tmp_path / "b", tiny(1), loss, steps=6, evaluate=lambda n: {"x": 1.0}, **opts)
    assert (full["steps_run"], full["stopped"]) == (6, "steps")


def test_fit_resumes_bit_for_bit(tmp_path):
    teacher = tiny_teacher()
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1

    def loss(net, g, step):
        return distill.pd_loss(distill.v_model(net, "pd", grad=True), teacher, x0, 2, STUDENT_T_END, g)

    opts = dict(lr=1e-3, warmup=1, ema=0.9, clip=1.0, seed=0, evaluate=lambda n: {"x": 0.0}, select="x",
                ckpt_every=3, eval_every=100)
    whole = distill.fit(tmp_path / "a", tiny(6), loss, steps=6, **opts)
    distill.fit(tmp_path / "b", tiny(6), loss, steps=3, **opts)
    (tmp_path / "b" / "done.pt").unlink()  # as if stopped after step 3's checkpoint
    resumed = distill.fit(tmp_path / "b", tiny(6), loss, steps=6, **opts)
    assert resumed["steps_run"] == 6
    # the best (here: first) EMA is the init in both; compare the trained networks' checkpoints
    a, b = (torch.load(tmp_path / d / "state.pt", weights_only=True)["net"] for d in "ab")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# -- shipped students --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return pretrained.load("digits")


def _sample(model, name, nfe):
    x_T = samplers.initial_noise(SAMPLE_SEED, range(SAMPLE_N), (1, 8, 8))
    noise = samplers.SampleNoise(SAMPLE_SEED, range(SAMPLE_N), (1, 8, 8))
    with model.counting() as c:
        x = samplers.get(name).sample(model, x_T, nfe, noise=noise)
    assert c.n == nfe  # every student evaluation counts on the checkpoint
    return x


@needs_weights
def test_students_reproduce_committed_samples(digits):
    expected = torch.load(FIXTURE, weights_only=True)
    assert sorted(expected) == sorted(f"{n}@{k}" for n, k in SAMPLE_CELLS)
    for name, nfe in SAMPLE_CELLS:
        torch.testing.assert_close(_sample(digits.model, name, nfe), expected[f"{name}@{nfe}"], rtol=0, atol=1e-5,
                                   msg=f"{name} at NFE {nfe}")


@needs_weights
def test_student_weights_checked_by_checksum(tmp_path):
    folder = tmp_path / "digits-kd"
    shutil.copytree(students.KD_FOLDER, folder)
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum mismatch"):
        students.load_student(folder, "digits-kd", "kd", torch.device("cpu"))


@needs_weights
def test_unsupported_cells(digits):
    lw = pretrained.load("digits-lw").model
    for name in ("kd", "pd", "cd"):
        with pytest.raises(NoStudent, match=f"^{name} on checkpoint 'digits-lw': no distilled student$") as info:
            samplers.get(name).check_model(lw, 1)
        # the sampler names what is missing; the checkpoint registry names who has it
        assert students.unsupported_reason(info.value) == (f"{name} on checkpoint 'digits-lw': no distilled "
                                                           "student; students exist for: digits")
    with pytest.raises(samplers.Unsupported, match=r"pd was trained for NFE \[1, 2, 4, 8\]; asked 5"):
        samplers.get("pd").check_model(digits.model, 5)
    with pytest.raises(samplers.Unsupported, match="kd is a one-step student"):
        samplers.get("kd").check_nfe(2)
    samplers.get("pd").check_model(digits.model, 4)  # and a trained NFE passes


def test_unsupported_reason_of_other_errors_is_their_text():
    exc = samplers.UnsupportedNFE("kd is a one-step student: NFE 1 only; asked 2")
    assert students.unsupported_reason(exc) == str(exc)


@needs_weights
@pytest.mark.parametrize("sampler, nfe", [("kd", 1), ("pd", 1), ("pd", 2), ("pd", 4), ("pd", 8), ("cd", 1)])
def test_training_cost_of_each_student(sampler, nfe):
    """Each student's manifest carries its full cost (the digits-v start included), and its stages add up to it."""
    cost = students.training_cost(sampler, nfe)
    assert set(cost) == set(students.COST_COLUMNS) and cost["threads"] >= 1
    assert cost["optimiser_steps"] > 0 and cost["teacher_nfe"] > 0 and cost["seconds"] > 0
    folder = {"kd": students.KD_FOLDER, "pd": students.PD_FOLDER, "cd": students.CD_FOLDER}[sampler]
    full = read_manifest(folder)["training_cost"]
    stages = full["stages"]
    assert stages[0]["stage"] == "digits-v"
    assert full["optimiser_steps"] == sum(s["optimiser_steps"] for s in stages)
    assert full["teacher_nfe"] == sum(s["teacher_nfe"] for s in stages)
    if sampler == "pd":  # fewer steps cost more rounds
        per = full["per_student"]
        assert [per[str(n)]["seconds"] for n in (8, 4, 2, 1)] == sorted(per[str(n)]["seconds"] for n in (8, 4, 2, 1))
        assert per["1"]["teacher_nfe"] == full["teacher_nfe"]
    assert students.training_cost("ddim") is None


def test_cost_stages_of_a_manifest_before_costs():
    """KD: pairs x solver NFE teacher evaluations; PD: 2 teacher DDIM steps per sample per step; CD: one."""
    from pretrained.recipes.train_students import cost_stages
    v = {"training": {"steps": 5, "steps_run": 7, "seconds": 3.0}, "optimiser": {"threads": 1}}
    opt = {"batch": 4, "threads": 1}
    kd = {"student": "kd", "optimiser": opt, "training": {"steps": 9, "steps_run": 10, "seconds": 2.0},
          "data_set": {"pairs": 16, "seconds": 1.0, "x_end": "digits teacher, samplers.get('x', t_end=0.001), 50 NFE"}}
    assert [s["teacher_nfe"] for s in cost_stages(kd, v)] == [0, 800, 0]
    pd = {"student": "pd", "optimiser": opt, "training": {},
          "rounds": [{"student_steps": 2, "steps": 3, "steps_run": 5, "seconds": 1.0}]}
    assert [s["teacher_nfe"] for s in cost_stages(pd, v)] == [0, 40]
    cd = {"student": "cd", "optimiser": opt, "training": {"steps": 9, "steps_run": 10, "seconds": 2.0}}
    assert [(s["optimiser_steps"], s["teacher_nfe"]) for s in cost_stages(cd, v)] == [(7, 0), (10, 40)]


def write_fixture():
    """Regenerate the committed samples after retraining a student:
    PYTHONPATH=tests python -c 'import test_students as t; t.write_fixture()'."""
    model = pretrained.load("digits").model
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"{n}@{k}": _sample(model, n, k) for n, k in SAMPLE_CELLS}, FIXTURE)
