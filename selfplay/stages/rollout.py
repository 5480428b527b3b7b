"""The rollout stage: RISE's multi-turn self-correction episodes in an answer environment.

For every problem (cmu-mind/RISE ``workflow_gen.py``): turn t samples ``rise.num_samples[t]`` candidate
answers from turn t's model (the policy, another local model, or an OpenAI-compatible URL — a teacher),
drops degenerate candidates (a word repeated more than ``rise.max_word_repeats`` times; all dropped:
resampled up to 3 times, then the episode ends blocked), scores each with the environment, keeps the best
(first on ties) as the turn's answer, and stops at a correct one. Problems step together, so each turn is
one batched sampling call; finished episodes are appended to the shard file, so a killed rollout resumes
at the first unfinished problem (per-sample seeds make the rerun draw exactly what the first run would).

Output: ``OUT/shard-K-of-F.jsonl`` of episodes ``{id, query, answer, env, prompt, dialogue, turn_history:
{best_actions, best_observations, best_rewards, actions, rewards, observations}, max_reward, sampler}``
(the anchor's log fields), and ``OUT/manifest.json``; ``merge_shards`` joins them like generate's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from selfplay.config import Config
from selfplay.core.samplers import batch_size_for
from selfplay.envs.answer_envs import AnswerEnv, env_for_records, is_degenerate
from selfplay.errors import DataError, UserError
from selfplay.io import JsonlAppender

if TYPE_CHECKING:
    from selfplay.stages.shards import ShardJob, ShardPlan

Messages = list[dict[str, str]]
RESAMPLE_TRIES = 3


class TurnModel(Protocol):
    """Answers conversations: n candidates each. ``ids`` name the episodes (one per conversation): a model may
    keep what it computed for an episode until its next turn, whose conversation extends this one, and an
    optional ``release(ids)`` method is told when episodes end."""

    def respond(self, conversations: list[Messages], n: int, seed: int, ids: list[str]) -> list[list[str]]: ...


class LocalTurnModel:
    """A local model through our sampler, with the run's sampling settings and prompt format."""

    def __init__(self, sampler: Any, cfg: Config) -> None:
        self.sampler, self.cfg = sampler, cfg

    def respond(self, conversations: list[Messages], n: int, seed: int, ids: list[str]) -> list[list[str]]:
        from selfplay.core.samplers import format_prompt

        g = self.cfg.generate
        prompts = [format_prompt(self.sampler.tokenizer, c, g.prompt_format) for c in conversations]
        # The episode ids as cache keys: the next turn prefills only the answer's end and the feedback it appends.
        return self.sampler.generate(prompts, n=n, temperature=g.temperature, top_p=g.top_p,
                                     max_new_tokens=g.max_new_tokens, seed=seed, progress=False, cache_keys=ids)

    def release(self, ids: list[str]) -> None:
        """The episodes ``ids`` ended: free what the sampler kept for them."""
        self.sampler.release(ids)


class APITurnModel:
    """A model behind an OpenAI-compatible chat endpoint (a hosted teacher, or ``selfplay serve``).

    Each candidate is one request (not every server honours ``n``), ``concurrency`` at a time, with the
    ``remote`` section's timeout and retries; a request that still fails stops the rollout, naming the
    problem (episodes already written stay, and the rerun resumes after them).
    """

    def __init__(self, url: str, cfg: Config, concurrency: int = 8) -> None:
        from selfplay.judges.http import ChatClient

        base, _, model = url.partition("#")
        self.client = ChatClient.for_remote(base, model or "default", cfg.remote, concurrency=concurrency,
                                            role="teacher")
        self.cfg = cfg

    def respond(self, conversations: list[Messages], n: int, seed: int, ids: list[str]) -> list[list[str]]:
        from selfplay.judges.http import ChatRequest

        g = self.cfg.generate
        owners = [i for i in range(len(conversations)) for _ in range(n)]
        replies = self.client.chat_many([
            ChatRequest(conversations[i], label=f"problem '{ids[i]}'",
                        temperature=g.temperature, max_tokens=g.max_new_tokens) for i in owners])
        out: list[list[str]] = [[] for _ in conversations]
        for i, text in zip(owners, replies):
            out[i].append(text)
        return out


class TurnModels:
    """The model of each turn (``rise.models``, the last repeats), each loaded on first use and kept."""

    def __init__(self, cfg: Config, policy: str, loaded: dict[str, TurnModel] | None = None) -> None:
        self.cfg, self.policy = cfg, policy
        # The caller's dict itself: models loaded here stay available to the caller's next shard.
        self.loaded: dict[str, TurnModel] = loaded if loaded is not None else {}

    def spec(self, turn: int) -> str:
        models = self.cfg.rise.models
        return models[min(turn, len(models) - 1)].strip()

    def release(self, ids: list[str]) -> None:
        """Episodes ``ids`` ended: every loaded model that keeps per-episode state frees it."""
        for model in self.loaded.values():
            release = getattr(model, "release", None)
            if release is not None:
                release(ids)

    def __getitem__(self, turn: int) -> TurnModel:
        from selfplay.stages.shards import load_sampler

        spec = self.spec(turn)
        if spec not in self.loaded:
            if spec.startswith(("http://", "https://")):
                self.loaded[spec] = APITurnModel(spec, self.cfg, concurrency=max(1, self.cfg.rank.batch_size))
            else:
                path = self.policy if spec == "policy" else spec
                self.loaded[spec] = LocalTurnModel(load_sampler(self.cfg, path, f"rollout turn {turn + 1}"), self.cfg)
        return self.loaded[spec]


@dataclass
class Episode:
    """One problem's attempts so far."""

    record: dict[str, Any]
    start: Messages
    best_actions: list[str] = field(default_factory=list)
    best_observations: list[str] = field(default_factory=list)
    best_rewards: list[float] = field(default_factory=list)
    actions: dict[str, list[str]] = field(default_factory=dict)
    rewards: dict[str, list[float]] = field(default_factory=dict)
    observations: dict[str, list[str]] = field(default_factory=dict)
    blocked: bool = False

    def conversation(self) -> Messages:
        turns: Messages = []
        for action, observation in zip(self.best_actions, self.best_observations):
            turns += [{"role": "assistant", "content": action}, {"role": "user", "content": observation}]
        return self.start + turns

    @property
    def solved(self) -> bool:
        return bool(self.best_rewards) and self.best_rewards[-1] == 1.0

    def to_json(self, env: AnswerEnv, info: dict[str, Any]) -> dict[str, Any]:
        r = self.record
        row = {"id": r["id"], "query": env.question(r), "answer": env.gold(r), "env": env.name,
               "prompt": self.start, "dialogue": self.conversation(),
               "turn_history": {"best_actions": self.best_actions, "best_observations": self.best_observations,
                                "best_rewards": self.best_rewards, "actions": self.actions,
                                "rewards": self.rewards, "observations": self.observations},
               "max_reward": max(self.best_rewards) if self.best_rewards else None, "turns": len(self.best_actions),
               "blocked": self.blocked, "sampler": info}
        if r.get("meta"):
            row["meta"] = r["meta"]
        return row


def _candidates(model: TurnModel, episodes: list[Episode], n: int, seed: int, max_repeats: int) -> list[list[str]]:
    """n candidates per episode with degenerate ones dropped; an episode whose candidates are all
    degenerate is asked again (another seed) up to RESAMPLE_TRIES times, then gets none."""
    result: list[list[str]] = [[] for _ in episodes]
    todo = list(range(len(episodes)))
    for attempt in range(RESAMPLE_TRIES + 1):
        if not todo:
            break
        drawn = model.respond([episodes[i].conversation() for i in todo], n, seed + 7919 * attempt,
                              [episodes[i].record["id"] for i in todo])
        for i, texts in zip(todo, drawn):
            result[i] = [t for t in texts if not is_degenerate(t, max_repeats)]
        todo = [i for i in todo if not result[i]]
    return result


def play_episodes(env: AnswerEnv, records: list[dict[str, Any]], models: TurnModels, cfg: Config,
                  on_done: Any) -> None:
    """Run the episodes of ``records`` turn by turn, all problems together; ``on_done(episode)`` fires as
    each episode ends (solved, blocked, or out of turns), after the turn models released it."""
    r = cfg.rise

    def end(ep: Episode) -> None:
        models.release([ep.record["id"]])
        on_done(ep)

    live = [Episode(rec, env.reset(rec)) for rec in records]
    for t in range(r.max_turns):
        if not live:
            break
        n = r.num_samples[min(t, len(r.num_samples) - 1)]
        candidates = _candidates(models[t], live, n, cfg.generate.seed, r.max_word_repeats)
        still = []
        for ep, texts in zip(live, candidates):
            key = str(t)
            if not texts:
                ep.blocked = True
                ep.actions[key], ep.rewards[key], ep.observations[key] = [], [], []
                end(ep)
                continue
            steps = [env.step(ep.record, text) for text in texts]
            ep.actions[key] = texts
            ep.rewards[key] = [s.reward for s in steps]
            ep.observations[key] = [s.feedback for s in steps]
            best = max(range(len(steps)), key=lambda i: (steps[i].reward, -i))  # first of the best
            ep.best_actions.append(texts[best])
            ep.best_rewards.append(steps[best].reward)
            ep.best_observations.append(steps[best].feedback)
            if steps[best].done or t == r.max_turns - 1:
                end(ep)
            else:
                still.append(ep)
        live = still


def check_golds(env: AnswerEnv, records: list[dict[str, Any]], source: str | Path,
                skip_invalid: bool) -> tuple[list[dict[str, Any]], int]:
    """Drop (``skip_invalid``) or refuse records whose reference has no answer the environment can parse."""
    bad = [i for i, rec in enumerate(records) if env.parse_gold(env.gold(rec)) is None]
    if bad and not skip_invalid:
        rec = records[bad[0]]
        path = Path(source)
        path = path / "train.jsonl" if path.is_dir() else path
        line = _line_of(path, rec["id"])
        raise DataError(f"record '{rec['id']}' has no answer the {env.name} environment can parse "
                        f"({len(bad)} such record(s); --skip-invalid drops them)", path=path, line=line,
                        field="reference")
    return [rec for i, rec in enumerate(records) if i not in set(bad)], len(bad)


def _line_of(path: Path, record_id: str) -> int | None:
    import json

    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip() and json.loads(line).get("id") == record_id:
                    return n
    except (OSError, ValueError):
        return None
    return None


def rollout_info(cfg: Config, model: str, env: AnswerEnv) -> dict[str, Any]:
    """The settings every episode of an output directory must share (checked on resume)."""
    g, r = cfg.generate, cfg.rise
    return {"kind": "rise", "env": env.name, "rewards": env.rules, "model": model, "models": list(r.models), "max_turns": r.max_turns,
            "num_samples": list(r.num_samples), "max_word_repeats": r.max_word_repeats, "temperature": g.temperature,
            "top_p": g.top_p, "max_new_tokens": g.max_new_tokens, "seed": g.seed, "prompt_format": g.prompt_format}


def run_rollout(cfg: Config, model: str, data: str | Path, out_dir: Path, *, split: str = "train",
                shard: tuple[int, int] | None = None, skip_invalid: bool = False,
                loaded: dict[str, TurnModel] | None = None) -> Path:
    """Play RISE episodes for the prompts of one shard of ``data`` into ``out_dir``; returns the shard file.

    ``loaded`` maps turn-model specs ("policy", a path, a URL) to models already at hand (tests use
    scripted ones); the others are loaded on first use.
    """
    from selfplay.data.records import load_sft
    from selfplay.progress import console
    from selfplay.stages.shards import open_shard

    records = load_sft(data, split)
    env = env_for_records(cfg.rise.env, records, cfg.rise.rewards)
    records, dropped = check_golds(env, records, data, skip_invalid)
    if dropped:
        console.print(f"rollout: dropped {dropped} record(s) without a parsable reference answer")
    if not records:
        raise UserError(f"{data}: no record with a reference answer the {env.name} environment can parse")
    info = rollout_info(cfg, model, env)
    with open_shard(cfg, model, data, out_dir, info, split=split, shard=shard, ids=None,
                    check_model=not loaded, stage="rollout", records=records) as plan:
        if plan.todo:
            _play_into(plan, env, info, TurnModels(cfg, model, loaded), cfg)
    return plan.path


def _play_into(plan: ShardPlan, env: AnswerEnv, info: dict[str, Any], models: TurnModels, cfg: Config) -> None:
    """Play the shard's remaining problems, appending each episode as it ends."""
    from selfplay.progress import console, progress_bar

    chunk = batch_size_for(cfg.generate.batch_size) * 4  # problems per round: finished work reaches disk regularly
    solved = 0
    with JsonlAppender(plan.path, lazy=True) as out, progress_bar(f"{plan.label} ({env.name})", total=plan.total,
                                                       completed=plan.total - len(plan.todo)) as bar:
        def done(ep: Episode) -> None:
            nonlocal solved
            out.write(ep.to_json(env, info))
            solved += ep.solved
            bar.advance()

        for start in range(0, len(plan.todo), chunk):
            play_episodes(env, plan.todo[start:start + chunk], models, cfg, done)
    console.print(f"{plan.label}: {len(plan.todo)} episodes, {solved} solved, written to {plan.path}")


def rollout_shards(cfg: Config, job: ShardJob, shards: list[int], num_shards: int) -> None:
    """Play shards ``shards`` of ``num_shards`` of ``job`` in this process, loading each turn model once for all
    of them."""
    loaded: dict[str, TurnModel] = {}
    for k in shards:
        run_rollout(cfg, job.model, job.data, job.out, split=job.split, shard=(k, num_shards),
                    skip_invalid=job.skip_invalid, loaded=loaded)
