"""One config tree for every command.

Precedence: dataclass defaults < YAML (``--config``) < ``--set a.b=c`` (repeatable) < explicit CLI flags.
Strict: an unknown key or a value of the wrong type raises :class:`ConfigError` naming the dotted key and
suggesting the nearest valid one. Per-iteration values live in ``loop.schedule`` as
``{"train.lr": [5e-7, 5e-7, 1e-7, 1e-7]}``; :func:`for_iteration` applies them.

Defaults are the anchors' numbers (DESIGN.md); ``configs/quickstart.yaml`` shrinks them for a CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from selfplay.config_ranges import check_launch, check_optimizer, check_ranges, check_selection
from selfplay import config_tree
from selfplay.config_tree import all_keys, build, deep_merge, set_dotted
from selfplay.errors import ConfigError, suggest


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class ModelConfig:
    # HF hub id, local directory, or an offline alias such as "smollm2-135m-instruct".
    name_or_path: str = "smollm2-135m-instruct"
    # A hub commit hash, tag or branch pinning a hub model (local directories and aliases have none);
    # recorded in the run's config.yaml and in every trained model's selfplay_model.json.
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    # A prepared data directory (``selfplay data prepare``) or any source ``data prepare`` accepts.
    source: str = "synth:arith"
    format: str = "auto"
    split: str = "train"
    num: int | None = None
    seed: int = 0
    # Held-out prompts used for the per-iteration evaluation (taken from the test split, else train).
    eval_num: int = 32
    # Validation prompts for the evaluation inside an iteration (train.eval_every) and checkpoint selection
    # (loop.select): a seeded sample of the training records left after the held-out split, never a training
    # prompt of any iteration; saved as run_dir/data/val.jsonl. 0: none (every training record trains).
    val_num: int = 0


@dataclass
class GenerateConfig:
    backend: Literal["hf", "vllm"] = "hf"
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    # Prompts decoded at once (HF backend; n rows each); unset: the device's default (on a CPU 64 in bf16, 32 in
    # fp32; 256 on a GPU: core.samplers.default_batch_size), the KV-cache budget bounding the rows either way.
    batch_size: int | None = None
    seed: int = 0
    # chat (the model's template) | spin-instruct (SPIN's "### Instruction:") | alpaca (FireAct / SPIN-agents)
    prompt_format: Literal["chat", "spin-instruct", "alpaca"] = "chat"
    # Texts that end a sample (not included in it), e.g. ["\nObservation:"]; EOS and max_new_tokens always do.
    stop: list[str] = field(default_factory=list)
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    # Sharding: slice ``data_frac`` of length ``frac_len`` of the shuffled prompts, or ``num_fracs`` equal slices.
    num_fracs: int | None = None
    data_frac: int | None = None
    frac_len: int | None = None


@dataclass
class RankConfig:
    # "verifier:arith", "verifier:gsm8k", "pairrm", "gpm:PATH", "reward-model:PATH", "llm-judge:URL"
    judge: str = "pairrm"
    batch_size: int = 8
    device: str = "auto"


@dataclass
class GPMConfig:
    """The head of a judge being trained (``selfplay train --method gpm | bt-rm``, arXiv 2410.02197)."""

    # 2m (even) for a General Preference Model; 1 for a Bradley-Terry scalar reward.
    value_head_dim: int = 6
    # A prompt head gating the 2x2 blocks with softmax(prompt_head(last prompt token)).
    prompt_head: bool = False
    # Temperature of the pairwise logistic loss: the anchor's 0.1 for GPM, 1 for BT (= TRL's reward loss).
    tau: float = 0.1
    # L2-normalise the GPM embedding v. Off, as the anchor's trainer (its normalisation is commented out, and the
    # GPM its GPO runs use is a `..._no_l2` checkpoint); on, as its inference code and the `w_l2` prompt-head runs.
    # Normalised embeddings start in a narrow cone and can stall on intransitive data (docs/DESIGN-NOTES.md).
    normalize: bool = False
    # TRL's reward centring: + c * (r_w + r_l)^2 (Bradley-Terry only).
    center_rewards_coefficient: float = 0.0


@dataclass
class TrainConfig:
    # A loss of the method's objective (selfplay.core.objectives); "auto" picks the method's default.
    loss: str = "auto"
    beta: float = 0.1
    lr: float = 5e-7
    epochs: float = 1.0
    max_steps: int = -1
    optimizer: Literal["rmsprop", "adamw"] = "rmsprop"
    # AdamW's betas (torch's default; the GPM anchor trains with [0.9, 0.95]).
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = 0.1
    # Warm-up as a step count; > 0 overrides warmup_ratio (HF TrainingArguments' rule; the agent anchors use 100).
    warmup_steps: int = 0
    weight_decay: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    # Records per batch of the reference log-prob pass (null: batch_size). It runs without gradients, so it can take
    # more than a micro-batch sized for the backward's activations (TRL's precompute_ref_batch_size). Results can
    # differ from batch_size's in the last float bits (other matrix shapes).
    reference_batch_size: int | None = None
    max_length: int = 1024
    max_prompt_length: int = 512
    gradient_checkpointing: bool = False
    # RMSNorm and the SwiGLU product recompute their elementwise intermediates in backward instead of keeping them
    # (Llama/Mistral/Qwen2; selfplay.core.lean_activations): the same gradients up to rounding, fewer activations.
    # Left off under a DeepSpeed or custom accelerate config (sharded weights: not tested there).
    lean_activations: bool = True
    # While training, allocations of at least this many bytes get their own mapping and go back to the OS when
    # freed (glibc's mmap threshold; selfplay.core.memory.large_blocks_unmapped). Smaller: less fragmentation,
    # lower peak memory, more page faults (time). Memory and time only: the same results. With 131072 the SPIN
    # quickstart's second training unit alone peaked at 2.50 GiB instead of 2.95-2.96, and the whole quickstart's
    # training at 2.88 GiB instead of 3.02-3.09 (README, Threads and memory; one run against 2 and 4).
    mmap_threshold: int = 1 << 20
    # "auto": bf16 where the hardware supports it.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    save_merged: bool = False
    logging_steps: int = 10
    save_steps: int = 200
    # Evaluate the model being trained on the validation prompts (data.val_num; `selfplay train --val-data`)
    # every N optimizer steps, or at the end of every epoch ("epoch"), and at the last step; 0: never. Greedy
    # task accuracy and real-answer log-likelihood, logged as eval/* at that step (loop.select picks by them).
    eval_every: int | Literal["epoch"] = 0
    seed: int = 42
    label_smoothing: float = 0.0
    # Reward-weighted regression (loss "rwr", RISE): weight exp(reward / rwr_temperature) as in the paper
    # and the anchor's conversion script, or the raw reward ("reward").
    rwr_weighting: Literal["exp", "reward"] = "exp"
    rwr_temperature: float = 0.4
    # GPO: the regression target score / beta is clamped to +-gpo_clamp (the GPM repo's CLAMP_THRES, with its
    # beta 0.001); null disables the clamp.
    gpo_clamp: float | None = 1000.0
    # Judges being trained (method gpm / bt-rm): the head and its loss.
    gpm: GPMConfig = field(default_factory=GPMConfig)
    # An alias of the top-level report_to (where trackers were named before the loop logged to them too).
    report_to: list[str] = field(default_factory=list)


@dataclass
class LoopConfig:
    iters: int = 3
    # Per-iteration overrides: dotted key -> one value per iteration (the last value repeats).
    schedule: dict[str, list[Any]] = field(default_factory=dict)
    # SPIN: train on this iteration's synthetic pairs plus the previous iteration's.
    mix_previous: bool = True
    # Prompts per iteration (None = all); SPPO uses disjoint slices per iteration.
    prompts_per_iter: int | None = None
    disjoint_prompts: bool = False
    # Which model of an iteration's training the next iteration starts from: the last, or the best evaluation
    # inside the iteration (train.eval_every on data.val_num validation prompts; saved when it improves).
    # train.epochs: 6 with select: best is the SPIN authors' "train 6 epochs and stop as needed".
    select: Literal["last", "best"] = "last"
    # What "best" means (higher is better): the validation task accuracy, or the validation real-answer
    # log-likelihood; auto: accuracy when the validation records have a task, else real_loglik.
    select_metric: Literal["auto", "accuracy", "real_loglik"] = "auto"
    # select: best stops the iteration's training after this many evaluations without improvement (0: never).
    patience: int = 0
    # Stop the loop after this many iterations in a row whose validation stop_metric is not above the best so
    # far (the base model's included; every model also answers the data.val_num validation prompts); the run's
    # result is then the best model, named in eval/final.json. 0: run every iteration (selfplay/loop_stop.py).
    stop_patience: int = 0
    # A metric of the validation evaluation, higher is better (accuracy, sample_accuracy, mean_score,
    # real_loglik, a method's own such as RISE's mt_acc_tlast or agent_em); auto: the method's target metric (RISE:
    # mt_acc_tlast, agent methods: agent_em), else accuracy where the records have a task, else real_loglik.
    stop_metric: str = "auto"


@dataclass
class EvalConfig:
    task: str = "auto"
    max_new_tokens: int = 256
    batch_size: int = 16
    judge: str | None = None
    # Per-iteration eval: also draw this many samples per held-out prompt at generate.temperature/top_p
    # and report their mean verifier accuracy / judge score (0 = greedy answers only).
    num_samples: int = 0


@dataclass
class RiseConfig:
    """RISE (arXiv 2407.18219): multi-turn self-correction rollouts, conversion, multi-turn evaluation."""

    # gsm8k | math | arith (the tasks with a RISE rule, selfplay.envs.answer_envs.ENVS); auto = the data's task.
    env: str = "auto"
    # How attempts are checked: selfplay (math-verify for MATH; GSM8K numbers read leniently; -1 without an
    # answer) | anchor (cmu-mind/RISE's own checkers: MATH's string normalisation with 0 for no box, GSM8K's
    # int() of the last box). docs/anchor-differences.md lists where they differ.
    rewards: str = "selfplay"
    # Collection: turns per episode (an episode stops at a correct answer) and candidates per turn
    # (n_1 ... n_T, the last repeats): the best by reward (first on ties) becomes the turn's answer.
    max_turns: int = 2
    num_samples: list[int] = field(default_factory=lambda: [1, 4])
    # The model of each turn (the last repeats): "policy" (the iteration's model), a model directory, hub
    # id or alias, or an OpenAI-compatible URL "http://host:port/v1#model" (a teacher, e.g. selfplay serve).
    models: list[str] = field(default_factory=lambda: ["policy"])
    # Candidates with a word repeated more than this many times are dropped as degenerate (the anchor's 150).
    max_word_repeats: int = 150
    # Conversion into weighted training turns: all | better | best | success (workflow_convert.py).
    criteria: Literal["all", "better", "best", "success"] = "all"
    remove_duplicates: bool = True
    shuffle: bool = True
    # Keep only episodes that end correct (the anchor's --only_success), before the criteria pick turns.
    only_success: bool = False
    # Evaluation: sequential turns (one sample each, feedback never reveals correctness), the context
    # window (the most recent k turns kept, the anchor's --context_window), parallel samples of turn 1.
    eval_turns: int = 5
    context_window: int = 2
    eval_parallel: int = 5


@dataclass
class AgentConfig:
    """Tool-using agents (SPIN for agents, FireAct): ReAct rollouts with tools, evaluation."""

    # A task of selfplay.envs.tasks.TASKS (hotpotqa, bamboogle, strategyqa, mmlu, ...): how answers are scored.
    task: str = "hotpotqa"
    # The agent's tools (selfplay.envs.tools.TOOLS: search, finish, calculator); empty: the task's own
    # (Task.tools: search and finish for the QA tasks, calculator and finish for arith/gsm8k/math).
    tools: list[str] = field(default_factory=list)
    # How a step's text becomes a tool call (selfplay.envs.react.ACTION_FORMATS): fireact (the anchor's parser:
    # everything after "\nAction: ", the argument between the first "[" and the next, minus its last
    # character) | strict (the first line, exactly name[argument]).
    actions: str = "fireact"
    # What the model sees where a call yields nothing usable (selfplay.envs.tools.OBSERVATION_STYLES): fireact
    # ("None" for an empty search, the anchor's exception text for an unknown tool, an action without "["
    # dropped) | selfplay ("No results found.", "Invalid action: ...").
    observations: str = "fireact"
    # The search tool's backend: replay (offline, recorded results + BM25) | serpapi (needs SERPAPI_API_KEY).
    search: str = "replay"
    # Replay sources: FireAct trajectory files and query -> result caches (JSON/JSONL).
    search_sources: list[str] = field(default_factory=list)
    # serpapi: where fetched results are cached (the anchor's tools/search.json).
    search_cache: str | None = None
    max_steps: int = 11
    # A step without "Action: " is sampled again up to this many times, then becomes "finish[]".
    retries: int = 5
    # Sampling temperature of rollouts (FireAct's --temperature 0.7); evaluation is greedy, and its retries
    # sample at this temperature (a greedy retry would repeat itself).
    temperature: float = 0.7
    # Trajectories per question (>= 2 gives agent-dpo reward-different pairs).
    samples: int = 1
    # Train the tool observations of trajectories too (the anchors do: FireAct's SFT trains the whole text,
    # its agent DPO chat-template strings holding them); off: they are context, never trained.
    train_on_observations: bool = False
    # A few-shot ReAct prompt file put before each question (e.g. FireAct's react_hotpotqa_google.txt).
    fewshot: str | None = None


@dataclass
class RemoteConfig:
    """Calls to remote services: LLM judges (``rank``, ``eval``), RISE teachers (URLs in ``rise.models``) and
    SerpAPI search. In no fingerprint: these settings decide how long to wait for a reply, not what it means."""

    # Seconds one request may take in all (connect, wait, read the whole reply): a server that accepts and
    # never answers, or answers one byte a second, is cut off here. 600 s is the openai client's default (a
    # long judgment from a local model on a CPU takes minutes); lower it for a hosted API.
    timeout: float = 600.0
    # Tries after the first, for timeouts, dropped connections, 408/409/425/429/5xx and 200 replies that are
    # not chat completions; every request in flight to one endpoint waits out one shared backoff of
    # backoff * 2**round seconds (or the server's Retry-After, at most 120 s).
    max_retries: int = 4
    backoff: float = 1.0
    # SerpAPI: a search that still fails after these is an observation saying so (counted), never a crash.
    search_timeout: float = 30.0
    search_retries: int = 2
    # LLM judges in `rank`: the least share of a prompt's sample pairs that must get a verdict in both orders.
    # Below it, or with none at all (also at the default 0), the rank stops with an error naming the prompt
    # instead of writing ties (a verdict missing now and then is a tie, as in FastChat).
    min_usable: float = 0.0


@dataclass
class LaunchConfig:
    """Where every stage runs (``selfplay.core.launchers``); the same YAML runs on a laptop and on 2 x 8 GPUs.

    ``num_processes`` counts processes on all machines together (accelerate's convention): sampling,
    ranking and rollouts run that many data-parallel workers (a vLLM engine of ``tensor_parallel_size``
    GPUs counts as that many), training that many accelerate processes; ``train.batch_size`` is per process.
    """

    # "auto": several processes when num_processes or num_machines > 1, else this process;
    # "local": always this process; "accelerate": training always re-launched under `accelerate launch`.
    backend: Literal["auto", "local", "accelerate"] = "auto"
    num_processes: int = 1
    # Multi-node: run the same command on every machine with its own machine_rank (0 = the main machine,
    # which also owns the run directory's bookkeeping); a run directory on a filesystem all machines share.
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None
    accelerate_config: str | None = None
    deepspeed_config: str | None = None
    # Multi-node: a machine whose heartbeat (run_dir/.machines/, every 2 s) is older than this is taken for
    # stopped by the machines waiting for it (on the same host a vanished PID is noticed at once).
    heartbeat_timeout: float = 30.0


@dataclass
class Config:
    run_dir: str = "runs/default"
    # A method of the registry (selfplay.methods.METHODS); checked, with its preset applied, by
    # selfplay.methods.load_config.
    method: str = "spin"
    seed: int = 0
    # Experiment trackers accelerate supports (tensorboard, wandb, trackio, mlflow, comet_ml, aim, ...) that
    # get training steps and the loop's per-iteration evaluation rows, besides their JSONL files
    # (selfplay.trackers); trackers that keep files write them under the run's trackers/ directories.
    report_to: list[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rise: RiseConfig = field(default_factory=RiseConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)


ALL_KEYS = all_keys(Config)


def parse_set(item: str) -> tuple[str, Any]:
    """Parse one ``--set a.b=c``; the value is read as YAML (numbers, bools, lists)."""
    return config_tree.parse_set(item, ALL_KEYS)


def load_config(path: str | Path | None = None, sets: list[str] | None = None,
                flags: dict[str, Any] | None = None, preset: dict[str, Any] | None = None) -> Config:
    """Resolve the config: defaults < ``preset`` < YAML < ``--set`` < explicit flags (dotted keys, None = unset).

    Commands use :func:`selfplay.methods.load_config`, which passes the chosen method's preset (the
    anchors' numbers) and checks the method's options; this function knows nothing about methods.
    """
    return _resolve(path, sets, flags, preset or {})


def _resolve(path: str | Path | None, sets: list[str] | None, flags: dict[str, Any] | None,
             preset: dict[str, Any]) -> Config:
    tree: dict[str, Any] = deep_merge(dataclasses.asdict(Config()), preset)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        build(Config, loaded, ALL_KEYS)  # strict check with the file's own keys, before merging
        tree = deep_merge(tree, loaded)
    for item in sets or []:
        key, value = parse_set(item)
        set_dotted(tree, key, value)
    for key, value in (flags or {}).items():
        if value is not None:
            set_dotted(tree, key, value)
    cfg = build(Config, tree, ALL_KEYS)
    check_ranges(cfg)
    check_optimizer(cfg.train)
    _check_schedule(cfg)
    check_launch(cfg.launch)
    check_selection(cfg)
    if cfg.report_to and cfg.train.report_to and cfg.report_to != cfg.train.report_to:
        raise ConfigError(f"config keys 'report_to' {cfg.report_to} and its alias 'train.report_to' "
                          f"{cfg.train.report_to} name different trackers; set report_to only.")
    return cfg



def _check_schedule(cfg: Config) -> None:
    for key, values in cfg.loop.schedule.items():
        if key not in ALL_KEYS or key.startswith("loop."):
            raise ConfigError(f"unknown key in loop.schedule: '{key}'.{suggest(key, ALL_KEYS)}")
        if not values:
            raise ConfigError(f"loop.schedule.{key} is an empty list")
    for k in range(max((len(v) for v in cfg.loop.schedule.values()), default=0)):
        check_ranges(for_iteration(cfg, k), f" (loop.schedule, iteration {k})")
        check_selection(for_iteration(cfg, k), f" (loop.schedule, iteration {k})")


def for_iteration(cfg: Config, k: int) -> Config:
    """The config of iteration ``k``: ``loop.schedule`` values applied (the last one repeats)."""
    if not cfg.loop.schedule:
        return cfg
    tree = dataclasses.asdict(cfg)
    for key, values in cfg.loop.schedule.items():
        set_dotted(tree, key, values[min(k, len(values) - 1)])
    return build(Config, tree, ALL_KEYS)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> None:
    """Save the resolved config (atomically) next to a command's output."""
    from selfplay.io import atomic_write_text

    atomic_write_text(Path(path), to_yaml(cfg))
