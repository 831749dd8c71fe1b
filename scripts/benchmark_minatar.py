"""PPG against PPO on MinAtar, several seeds per game, with rliable's interval estimates.

For every game, algorithm and seed it runs ``lit-rl fit --config configs/<algo>/minatar.yaml --data.env_id
minatar:<game> --data.seed S --data.total_timesteps B`` (one torch thread, ``--jobs`` runs at a time;
:mod:`scripts.runs`: a finished run whose resolved config, lit_rl code and packages match is reused, so the
benchmark can be finished over several sessions). The PPG config is the PPO one plus the auxiliary phase.

Each run's score is its final training return (the episodes that ended in the last 5% of the budget). Scores are
normalized per game as ``(score - random) / (reference - random)``: ``random`` is a uniform random policy's mean
return, measured here over 100 episodes with sticky actions 0.1; ``reference`` is gymnax-blines' published PPO
score (Asterix 15, Breakout 28, Freeway 58, SpaceInvaders 131; none for Seaquest, which is left out). gymnax plays
by other rules than these runs (no sticky actions, each game's minimal action set, Breakout cut at 1,000 steps),
so a normalized 1.0 is not gymnax's PPO under these rules: the normalization only puts the games on one scale for
the IQM, and PPG and PPO are normalized alike.
rliable (Agarwal et al. 2021) gives the IQM of the normalized scores over all runs with 95% stratified-bootstrap
confidence intervals, and the probability that PPG improves on PPO, with its interval.

Verdict (computed): PPG is above PPO where the IQM intervals separate (PPG's lower bound above PPO's upper
bound), behind where they separate the other way, and otherwise a tie. The same per game, from the interval of
each game's mean normalized score. Learning curves go next to the results file (``minatar.png``).

    python scripts/benchmark_minatar.py [--games breakout space_invaders] [--seeds 1 2 3] [--budget 1000000]
"""

import argparse
import functools
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.plot_learning_curves import load_runs, plot  # noqa: E402
from scripts.results import markdown_table, section, stamp, write_section  # noqa: E402
from scripts.runs import Run, commits, parse_run_arguments, final_return, last_sps, train  # noqa: E402

REFERENCE = {"asterix": 15.0, "breakout": 28.0, "freeway": 58.0, "space_invaders": 131.0}  # gymnax-blines' PPO
ALGOS = ("ppo", "ppg")
REPS = 20_000  # bootstrap resamples


def random_score(game: str, envs_: int = 10, per_env: int = 10, seed: int = 12345) -> float:
    """A uniform random policy's mean return on ``game`` over ``envs_ * per_env`` episodes (sticky actions 0.1,
    as the configs' envs): each env's first ``per_env`` episodes, so short episodes are not favoured."""
    import gymnasium as gym

    from lit_rl.envs import resolve_env_id

    envs = gym.make_vec(resolve_env_id(f"minatar:{game}"), num_envs=envs_)
    envs.action_space.seed(seed)
    envs.reset(seed=seed)
    returns: list[list[float]] = [[] for _ in range(envs_)]
    totals, resetting = np.zeros(envs_), np.zeros(envs_, bool)
    while min(len(r) for r in returns) < per_env:
        _, reward, terminated, truncated, _ = envs.step(envs.action_space.sample())
        totals += np.where(resetting, 0.0, reward)
        resetting = terminated | truncated
        for i in np.flatnonzero(resetting):
            returns[i].append(totals[i])
            totals[i] = 0.0
    envs.close()
    return float(np.mean([r[:per_env] for r in returns]))


def separation(x: tuple[float, float], y: tuple[float, float]) -> str:
    """PPG's standing against PPO from their intervals ``(low, high)``: above, behind or tie."""
    return "PPG above" if x[0] > y[1] else "PPG behind" if x[1] < y[0] else "tie"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", nargs="+", default=["breakout", "space_invaders"],
                        choices=["asterix", "breakout", "freeway", "space_invaders"])
    args = parse_run_arguments(parser, "minatar")
    out = args.out

    from rliable import library as rly
    from rliable import metrics

    started = stamp()
    runs = {(game, algo, seed): Run(out / game / algo / f"seed{seed}", REPO / "configs" / algo / "minatar.yaml",
                                    ("--data.env_id", f"minatar:{game}", "--data.seed", str(seed),
                                     "--data.total_timesteps", str(args.budget), "--torch_threads", "1"),
                                    f"minatar:{game}")
            for game in args.games for algo in ALGOS for seed in args.seeds}
    with ThreadPoolExecutor(args.jobs) as pool:
        records = dict(zip(runs, pool.map(functools.partial(train, report_only=args.report_only), runs.values())))

    randoms = {game: random_score(game) for game in args.games}
    rows, curves = [], {}
    normalized = {algo: np.zeros((len(args.seeds), len(args.games))) for algo in ALGOS}
    for j, game in enumerate(args.games):
        for algo in ALGOS:
            seeds = [runs[(game, algo, s)] for s in args.seeds]
            loaded = load_runs([r.metrics for r in seeds])
            curves[(game, algo.upper())] = loaded
            finals = np.array([final_return(c, args.budget) for c in loaded])
            normalized[algo][:, j] = (finals - randoms[game]) / (REFERENCE[game] - randoms[game])
            evals = [c["eval"] for c in loaded if c["eval"] is not None]
            walls = [records[(game, algo, s)]["wall_s"] / 60 for s in args.seeds]
            rows.append((game, algo.upper(), f"{finals.mean():.1f} +- {finals.std():.1f}",
                         ", ".join(f"{f:.1f}" for f in finals),
                         f"{np.mean(evals):.1f} +- {np.std(evals):.1f}" if evals else "n/a",
                         f"{normalized[algo][:, j].mean():.2f}", f"{np.mean([last_sps(r.metrics) for r in seeds]):.0f}",
                         f"{np.mean(walls):.1f}"))

    state = np.random.RandomState(0)
    iqm = lambda scores: np.array([metrics.aggregate_iqm(scores)])  # noqa: E731
    points, intervals = rly.get_interval_estimates({a.upper(): normalized[a] for a in ALGOS}, iqm, reps=REPS,
                                                   random_state=state)
    ppg_iv, ppo_iv = tuple(intervals["PPG"][:, 0]), tuple(intervals["PPO"][:, 0])
    overall = separation(ppg_iv, ppo_iv)
    improvement, improvement_iv = rly.get_interval_estimates(
        {"PPG,PPO": (normalized["ppg"], normalized["ppo"])}, metrics.probability_of_improvement, reps=REPS // 10,
        random_state=state)
    per_game = []
    for j, game in enumerate(args.games):
        mean = lambda scores: np.array([scores.mean()])  # noqa: E731
        p, iv = rly.get_interval_estimates({a.upper(): normalized[a][:, [j]] for a in ALGOS}, mean, reps=REPS,
                                           random_state=state)
        per_game.append((game, f"{p['PPO'][0]:.2f} [{iv['PPO'][0, 0]:.2f}, {iv['PPO'][1, 0]:.2f}]",
                         f"{p['PPG'][0]:.2f} [{iv['PPG'][0, 0]:.2f}, {iv['PPG'][1, 0]:.2f}]",
                         separation(tuple(iv["PPG"][:, 0]), tuple(iv["PPO"][:, 0]))))

    png = args.results.parent / "minatar.png"
    plot(curves, None, png)
    body = (f"configs/ppo/minatar.yaml and configs/ppg/minatar.yaml (PPO plus the auxiliary phase), "
            f"{args.budget:,} env steps per run, seeds {args.seeds}, sticky actions 0.1. Score: the mean training "
            "return over the episodes that ended in the last 5% of the budget; greedy evaluation: 10 episodes with "
            "the most likely action at the end (sticky actions still apply); mean +- std over seeds. Normalized: "
            "(score - random) / (gymnax-blines' PPO - random); gymnax plays by other rules (no sticky actions, minimal "
            "action sets, Breakout cut at 1,000 steps), so 1.0 is not gymnax's PPO under these rules: the "
            "normalization puts the games on one scale for the IQM, PPG and PPO alike. SPS: env steps per second of "
            f"the whole run (1 torch thread{'' if args.report_only else f', {args.jobs} runs at a time'}). {args.conditions + ' ' if args.conditions else ''}Runs used commits {commits(list(records.values()))}.\n\n"
            + markdown_table(("game", "algo", "score", "per seed", "greedy eval", "normalized (mean)", "SPS",
                              "wall (min)"), rows)
            + "\nRandom policy (10 envs x their first 10 episodes) and reference (gymnax-blines' PPO): "
            + ", ".join(f"{g} {randoms[g]:.2f} / {REFERENCE[g]:g}" for g in args.games) + ".\n\n"
            + f"IQM of normalized scores over {len(args.games)} games x {len(args.seeds)} seeds, 95% stratified-"
            f"bootstrap intervals ({REPS:,} resamples, rliable):\n\n"
            + markdown_table(("algo", "IQM", "95% CI"), [
                (a.upper(), f"{points[a.upper()][0]:.3f}",
                 f"[{intervals[a.upper()][0, 0]:.3f}, {intervals[a.upper()][1, 0]:.3f}]") for a in ALGOS])
            + f"\nProbability that a PPG run improves on a PPO run (rliable): {float(np.ravel(improvement['PPG,PPO'])[0]):.2f} "
            f"[{float(np.ravel(improvement_iv['PPG,PPO'])[0]):.2f}, {float(np.ravel(improvement_iv['PPG,PPO'])[1]):.2f}].\n\n"
            + "Per game, mean normalized score with its 95% bootstrap interval:\n\n"
            + markdown_table(("game", "PPO", "PPG", "verdict"), per_game)
            + f"\n**Verdict (PPG above PPO only where the IQM intervals separate): {overall}** (PPG's interval "
            f"[{ppg_iv[0]:.3f}, {ppg_iv[1]:.3f}], PPO's [{ppo_iv[0]:.3f}, {ppo_iv[1]:.3f}]; from {len(args.seeds)} "
            "seeds a game, intervals this close are rough, and the probability of improvement above says how "
            "often a PPG run beats a PPO run).\n\n"
            f"Learning curves: ![MinAtar]({png.name}) (mean and min-max band over seeds, smoothed training return).")
    text = section(started, f"PPG vs PPO on MinAtar, {args.budget // 1000}k steps, seeds {args.seeds}", body,
                   " (driver); each run has 1 torch thread" + ("" if args.report_only else f", {args.jobs} at a time"))
    print(text)
    write_section(args.results, "PPG vs PPO on MinAtar, with interval estimates", "scripts/benchmark_minatar.py",
                  text)


if __name__ == "__main__":
    main()
