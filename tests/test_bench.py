"""The benchmark keeps working (its figures are read by people, not asserted: machines are noisy)."""

from __future__ import annotations

import io

import torch

from engine.bench import run_benchmarks


def test_quick_benchmark_reports_every_figure():
    out = io.StringIO()
    figures = run_benchmarks(quick=True, device="cpu", clip="tiny", out=out)
    text = out.getvalue()
    assert "# rendering" in text and "ratio whole step / guidance forward+backward" in text
    sizes = {(r["faces"], r["size"]) for r in figures["render"]}
    assert sizes == {(5000, 224), (5000, 512), (20000, 224), (20000, 512)}
    fast = figures["iteration"]["fast"]
    phases = ("field_forward", "render_forward", "guidance_forward", "guidance_backward",
              "render_backward", "field_backward", "optimizer", "whole_step")
    assert all(fast[p] > 0 for p in phases)
    assert fast["images"] == 9 and fast["views"] == 3
    assert fast["sum_of_phases"] == sum(fast[p] for p in phases[:-1])
    # a step dispatches hundreds of computing operations (on a GPU, a kernel launch each)
    assert 300 < fast["operations"] < 10_000
    assert f"operations a step (about one GPU kernel each) = {fast['operations']}" in text
    assert abs(fast["ratio"] - fast["whole_step"] / (fast["guidance_forward"] + fast["guidance_backward"])) < 1e-9
    parts = figures["parts"]["fast"]
    every = parts["grounding_every"]
    assert every == 25 and parts["clip_step"] > 0 and parts["grounding_step"] > 0
    assert abs(parts["average"] - ((every - 1) * parts["clip_step"] + parts["grounding_step"]) / every) < 1e-9
    assert parts["grounding_step_operations"] > parts["clip_step_operations"] > fast["operations"]
    assert "# part prompts" in text and "# localization" in text
    located = figures["localization"][256]
    assert all(located[p] > 0 for p in ("render", "detect", "segment", "patches", "settle"))
    assert located["boxes"] < located["masks"] == sum(located[p] for p in ("render", "detect", "segment", "patches",
                                                                             "settle"))


def test_operations_are_counted_by_name_without_views_allocations_or_reads():
    import torch

    from engine.bench_operations import OperationCounter, operations_of

    x = torch.ones(4, 3)
    with OperationCounter() as counter:
        a = x + 1
        b = a.view(-1).detach()
        a.t().contiguous()  # a copy: counted
        (b * 2).sum().item()
        torch.empty(3)
    assert counter.by_name == {"add": 1, "clone": 1, "mul": 1, "sum": 1} and counter.total == 4
    assert operations_of(lambda: torch.stack([x.sum() for _ in range(5)])) == 6


def test_operations_are_counted_as_this_cpu_and_as_a_cuda_gpu_run_a_step():
    from engine.bench import benchmark_clip, benchmark_grounding
    from engine.bench_launches import run_launch_benchmark
    from engine.model_kernels import LinearWithBfloat16Copy, PatchMatmul

    cpu = torch.device("cpu")
    # as a CUDA GPU with bf16 has them: the library's kernels and the bf16 weight copies of the image paths
    clip = benchmark_clip("tiny", cpu, like_cuda=True).model
    grounding = benchmark_grounding("tiny", cpu, like_cuda=True)
    assert not any(isinstance(m, PatchMatmul) for m in clip.modules())
    assert any(isinstance(m, LinearWithBfloat16Copy) for m in clip.vision_model.modules())
    assert any(isinstance(m, LinearWithBfloat16Copy) for m in grounding.model.model.backbone.modules())
    assert not any(isinstance(m, LinearWithBfloat16Copy) for m in grounding.model.model.text_backbone.modules())
    assert not any(isinstance(m, LinearWithBfloat16Copy) for m in benchmark_clip("tiny", cpu).model.modules())
    out = io.StringIO()
    figures = run_launch_benchmark(clip="tiny", faces=5_000, out=out)
    lines = out.getvalue().splitlines()
    rows = {line[:26].strip(): [int(n.replace(",", "")) for n in line[26:].split()] for line in lines[2:4]}
    assert rows["this CPU"] == list(figures["cpu"].values()) and rows["a CUDA GPU with bf16"] == list(
        figures["cuda"].values())
    assert rows.keys() == {"this CPU", "a CUDA GPU with bf16"}
    for holistic, part_clip, grounding_step in rows.values():
        assert 300 < holistic < part_clip < grounding_step  # crops and parts add; a grounding step is a larger model
    # the GPU's part CLIP step, by the engine function that dispatched each operation: all of them, most first
    by_function = figures["cuda_part_step_by_function"]
    assert sum(by_function.values()) == figures["cuda"]["part CLIP step"]
    assert lines[4].startswith(f"# where a part CLIP step's {figures['cuda']['part CLIP step']:,} operations")
    listed = [(line[10:], int(line[:8].replace(",", ""))) for line in lines[5:]]
    assert listed == by_function.most_common(len(listed)) and len(listed) == 25
    assert by_function["render/raster.py:rasterize"] > 0 and by_function["backward of field.py:_run"] > 0


def test_operations_are_attributed_to_the_engine_function_that_dispatched_them():
    import torch.nn.functional as F

    from engine.bench_operations import operations_by_function
    from engine.guidance.clip import segment_losses

    embeddings = torch.randn(6, 8, requires_grad=True)
    targets = F.normalize(torch.randn(2, 8), dim=-1)

    def work():
        losses = segment_losses(embeddings, [slice(0, 2), slice(2, 6)], targets)
        (losses.sum() * 2).backward()

    counter = operations_by_function(work)
    functions = counter.by_function
    assert sum(functions.values()) == counter.total
    # forward: two means, the stack, normalization, product, sum and subtraction in segment_losses (the means
    # in its list comprehension, a function of its own before Python 3.12)
    forward = functions["guidance/clip.py:segment_losses"] + functions["guidance/clip.py:<listcomp>"]
    assert forward >= 7 and functions["guidance/clip.py:segment_losses"] >= 5
    assert functions["backward of guidance/clip.py:segment_losses"] > 0  # their backward, by the node's forward
    assert functions["outside the engine"] >= 2  # the test's own sum and product, and their backward


def test_bench_operations_is_the_operations_benchmark(monkeypatch, capsys):
    import engine.bench_launches
    from engine.cli import main

    calls = []
    monkeypatch.setattr(engine.bench_launches, "run_launch_benchmark", lambda **kwargs: calls.append(kwargs))
    assert main(["bench", "--operations", "--clip", "tiny"]) == 0
    assert len(calls) == 1 and calls[0]["clip"] == "tiny"


def test_first_use_costs_are_the_first_run_of_each_step_less_the_second_by_operation():
    from engine.bench_first_use import LISTED_OPERATIONS, STEPS, run_first_use_benchmark

    out = io.StringIO()
    figures = run_first_use_benchmark(device="cpu", clip="tiny", faces=5_000, out=out)
    text = out.getvalue()
    assert figures["setup"] > 0
    for step in STEPS:
        timed = figures[step]
        assert timed["first"] > 0 and timed["second"] > 0
        assert timed["one_time"] == timed["first"] - timed["second"]
        assert f"{step:<16}{timed['first']:>10.3f}{timed['second']:>10.3f}" in text
        operations = timed["operations"]
        assert 0 < len(operations) <= LISTED_OPERATIONS
        for _name, once, first, second in operations:
            assert once == first - second and first > 0
        ordered = [once for _name, once, _first, _second in operations]
        assert ordered == sorted(ordered, reverse=True)  # the largest one-time costs first
        # the operations' own time fits in the step's wall time (the rest is outside any operation)
        assert sum(first for _name, _once, first, _second in operations) / 1e3 <= timed["first"]
    assert text.count("the operations with the largest one-time cost") == len(STEPS)


def test_bench_first_use_is_the_first_use_benchmark(monkeypatch):
    import engine.bench_first_use
    from engine.cli import main

    calls = []
    monkeypatch.setattr(engine.bench_first_use, "run_first_use_benchmark", lambda **kwargs: calls.append(kwargs))
    assert main(["bench", "--first-use", "--clip", "tiny", "--device", "cpu"]) == 0
    assert len(calls) == 1 and calls[0]["clip"] == "tiny" and calls[0]["device"] == "cpu"


def test_large_mesh_benchmark_measures_each_size_in_its_own_process():
    from engine.bench_large import LARGE_HEADER, format_large_row, large_mesh_rows

    rows = list(large_mesh_rows(max_vertices=1000, sizes=(8000,)))
    assert len(rows) == 1 and "error" not in rows[0], rows
    row = rows[0]
    assert row["vertices"] > 1000 >= row["optimized_vertices"] and row["peak_gb"] > 0 and row["estimate_gb"] > 0
    assert len(format_large_row(row).split()) == 7 and LARGE_HEADER.split()[0] == "faces"  # one value a column
    assert "failed:" in format_large_row({"faces": 10, "error": "MemoryError"})


def test_whole_command_benchmark_times_each_run_and_the_localization():
    from engine.bench_runs import BY_LABEL, PART_PROMPT, WholeRun, run_whole_commands

    out = io.StringIO()
    runs = (WholeRun("fast, 3 parts", "fast", PART_PROMPT, BY_LABEL, cut_on_cpu=True),
            WholeRun("faithful, 3 parts", "faithful", PART_PROMPT, BY_LABEL, cut_on_cpu=True),
            WholeRun("preview, 3 parts", "preview", PART_PROMPT, BY_LABEL, cut_on_cpu=True))
    figures = run_whole_commands(device="cpu", models="tiny", runs=runs, mesh="sample:lamp@2000", cpu_iterations=2,
                                 out=out)
    fast, faithful, preview = figures["runs"]
    assert "# whole commands" in out.getvalue() and "# localization" in out.getvalue()
    assert faithful["iterations"] == faithful["steps"] == 2 and faithful["full_iterations"] == 1500
    # the full run is estimated from the seconds per iteration; the whole command covers every phase
    assert faithful["full_run"] == faithful["wall"] + faithful["per_iteration"] * 1498
    assert fast["iterations"] == fast["steps"] == 2 and fast["full_iterations"] == 300
    for row in (fast, faithful, preview):
        assert row["wall"] > row["seconds_setup"] + row["seconds_optimizing"] > 0
        assert 0 < row["seconds_to_first_preview"] < row["seconds_setup"] + row["seconds_optimizing"]
        assert row["peak_memory_mb"] > 0 and row["device"] == "cpu"
    located = figures["localization"]["auto"]  # fast's 10 views, settled after every second one
    # the models load inside the localization, before its first view; the grounding model's load is a share of it
    assert 0 < located["grounding_load"] <= located["load"] < located["first_progress"] < located["total"]
    # located: plus the localization; fast and faithful load the grounding model anyway, preview does not
    for name, row in (("fast, 3 parts", fast), ("faithful, 3 parts", faithful)):
        assert figures["located"][name] == row["full_run"] + located["total"] - located["grounding_load"]
    assert figures["located"]["preview, 3 parts"] == preview["full_run"] + located["total"]
    # the CPU's goals are judged on these figures and printed (the cut fast run estimated in full)
    goals = out.getvalue().split("# the goals on this device (a CPU")[1].splitlines()[1:]
    assert len(goals) == 2  # faithful has no CPU goal
    assert goals[0].startswith("  fast, 3 parts, located <= 300 s")
    assert f"{figures['located']['fast, 3 parts']:.1f} s" in goals[0]
    assert goals[1].startswith("  fast, 3 parts, first parts <= 10 s")
    assert f"{located['first_progress']:.1f} s" in goals[1]


def test_goals_are_judged_for_the_device_on_the_runs_measured():
    from engine.bench_runs import GOALS, goal_verdicts

    figures = {
        "runs": [{"name": "fast, 3 parts", "full_run": 250.0, "precision": "auto"},
                 {"name": "text2mesh, holistic", "full_run": 88.7, "precision": "auto"}],
        "localization": {"auto": {"first_progress": 12.5}},
        "located": {"fast, 3 parts": 280.0},
    }
    cpu = [(goal.label(), measured, met) for goal, measured, met in goal_verdicts(figures, "cpu")]
    assert cpu == [("fast, 3 parts, located <= 300 s", 280.0, True),
                   ("fast, 3 parts, first parts <= 10 s", 12.5, False)]
    # on a GPU the same figures miss its goals; faithful was not measured, so it is not judged
    cuda = [(goal.run, measured, met) for goal, measured, met in goal_verdicts(figures, "cuda")]
    assert cuda == [("fast, 3 parts", 280.0, False), ("text2mesh, holistic", 88.7, False)]
    assert {goal.device for goal in GOALS} == {"cpu", "cuda"}


def test_float32_runs_are_not_repeated_where_auto_already_is_float32(monkeypatch):
    from engine import bench_runs
    from engine.bench_runs import BY_LABEL, PART_PROMPT, SET_FLOAT32, WholeRun, run_whole_commands

    timed, located = [], []

    def fake_run(run, iterations, models, mesh, device):
        timed.append(run.name)
        return {"wall": 10.0 + len(timed), "steps": iterations, "seconds_setup": 1.0, "seconds_optimizing": 2.0,
                "seconds_to_first_preview": 0.5, "seconds_loading_models": 0.1, "peak_memory_mb": 0.0}

    def fake_localization(models, mesh, device, overrides=()):
        located.append(overrides)
        return {"total": 5.0 + len(located), "load": 1.0, "grounding_load": 0.5, "first_progress": 2.0}

    monkeypatch.setattr(bench_runs, "_time_run", fake_run)
    monkeypatch.setattr(bench_runs, "time_localization", fake_localization)
    runs = (WholeRun("fast, 3 parts", "fast", PART_PROMPT, BY_LABEL, cut_on_cpu=True),
            WholeRun("fast, 3 parts, float32", "fast", PART_PROMPT, (*BY_LABEL, *SET_FLOAT32), cut_on_cpu=True))
    for native, expected in ((False, ["fast, 3 parts"]), (True, ["fast, 3 parts", "fast, 3 parts, float32"])):
        timed.clear()
        located.clear()
        monkeypatch.setattr(bench_runs, "native_bfloat16", lambda device, native=native: native)
        out = io.StringIO()
        figures = run_whole_commands(device="cpu", models="tiny", runs=runs, cpu_iterations=2, out=out)
        assert timed == expected and len(located) == len(expected)
        auto, float32 = figures["runs"]
        assert float32["repeated"] is not native and (float32["wall"] == auto["wall"]) is not native
        assert (figures["localization"]["float32"] is figures["localization"]["auto"]) is not native
        assert ("not run again" in out.getvalue()) is not native


def test_long_runs_are_cut_where_asked_on_any_device_and_in_full_on_a_gpu_by_default(monkeypatch):
    from engine import bench_runs
    from engine.bench_runs import BY_LABEL, PART_PROMPT, WholeRun, run_whole_commands

    timed = {}

    def fake_run(run, iterations, models, mesh, device):
        timed[run.name] = iterations
        return {"wall": 10.0, "steps": iterations, "seconds_setup": 1.0, "seconds_optimizing": 0.5 * iterations,
                "seconds_to_first_preview": 0.5, "seconds_loading_models": 0.1, "peak_memory_mb": 0.0}

    monkeypatch.setattr(bench_runs, "_time_run", fake_run)
    monkeypatch.setattr(bench_runs, "time_localization", lambda *args, **kwargs: {
        "total": 5.0, "load": 1.0, "grounding_load": 0.5, "first_progress": 2.0})
    runs = (WholeRun("fast, 3 parts", "fast", PART_PROMPT, BY_LABEL),
            WholeRun("faithful, 3 parts", "faithful", PART_PROMPT, BY_LABEL, cut_on_cpu=True))
    cases = ((False, None, 2), (False, 7, 7), (True, None, 1500), (True, 7, 7))  # (GPU seen, --cut, faithful's)
    for gpu, cut, expected in cases:
        monkeypatch.setattr(bench_runs, "_cuda_visible", lambda gpu=gpu: gpu)
        figures = run_whole_commands(device="auto", models="tiny", runs=runs, cpu_iterations=2, cut_iterations=cut,
                                     out=io.StringIO())
        assert timed == {"fast, 3 parts": 300, "faithful, 3 parts": expected}  # a short preset always runs in full
        faithful = figures["runs"][1]
        assert faithful["full_run"] == 10.0 + 0.5 * (1500 - expected)  # the rest estimated at the measured pace


def test_the_same_runs_twice_in_one_process_show_what_the_first_pays_once():
    from engine.bench_runs import BY_LABEL, HOLISTIC_PROMPT, PART_PROMPT, WholeRun, run_whole_commands

    out = io.StringIO()
    runs = (WholeRun("fast, 3 parts", "fast", PART_PROMPT, BY_LABEL, cut_on_cpu=True),
            WholeRun("preview, holistic", "preview", HOLISTIC_PROMPT, cut_on_cpu=True))
    figures = run_whole_commands(device="cpu", models="tiny", runs=runs, mesh="sample:lamp@2000", cpu_iterations=27,
                                 warm=True, out=out)
    parts, holistic = figures["warm"]
    assert "# the same runs twice in one process" in out.getvalue()
    # 27 iterations of fast: grounding steps end iterations 25 (the first) and none later
    assert parts["name"] == "fast, 3 parts" and parts["first_grounding_step"] > 0 and parts["grounding_step"] is None
    assert holistic["first_grounding_step"] is None and holistic["grounding_step"] is None  # no grounding steps
    for warm in (parts, holistic):  # each a part of the run it belongs to (no comparison of noisy times)
        assert 0 < warm["first_step"] < warm["first_run"] and 0 < warm["clip_step"] < warm["first_run"]
        assert 0 < warm["second_preview"] < warm["second_run"]
    assert "first_run" not in figures["runs"][0]  # the child processes' table is unchanged


def test_only_picks_runs_named_exactly_before_runs_named_so_far():
    from engine.bench_runs import RUNS
    from engine.cli import chosen

    names = tuple(run.name for run in RUNS)
    assert chosen(names, ["fast, 3 parts"]) == ("fast, 3 parts",)  # not its float32 twin
    assert chosen(names, ["fast"]) == ("fast, 3 parts", "fast, 3 parts, float32")
    assert chosen(names, ["text2mesh", "faithful"]) == ("faithful, 3 parts", "text2mesh, holistic")
    assert chosen(names, None) == names
    # each value on its own: an exact name does not drop another value's prefix matches
    assert chosen(names, ["fast, 3 parts, float32", "preview"]) == ("fast, 3 parts, float32", "preview, 3 parts")


def test_only_that_names_no_run_is_refused_with_the_runs_names(capsys):
    from engine.cli import EXIT_ERROR, main

    assert main(["bench", "--runs", "--only", "fastest"]) == EXIT_ERROR
    message = capsys.readouterr().err
    assert "--only 'fastest' names no run" in message
    assert "'fast, 3 parts'" in message and "'text2mesh, holistic'" in message  # what it could have named


def test_the_thickness_traced_on_a_device_is_timed_first_and_again():
    """What `bench --device cuda` prints for a GPU's thickness (the CPU stands in for the device)."""
    from engine.bench import device_thickness_timing

    first, again = device_thickness_timing(2000, torch.device("cpu"))
    assert first > 0 and again > 0
