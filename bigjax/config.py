"""The config schema: every key a run understands, with its default and type.

Config files in configs/ start from `default_config()` and override what they need, so every
key that exists is listed here once. `check` rejects keys the schema does not know and values
of the wrong type, before anything expensive happens.
"""

import importlib.util
import os
import pathlib
import sys

import ml_collections

from bigjax import finetune, models, preference, writers
from bigjax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE_VARIABLE = 'BIGJAX_COMPILATION_CACHE_DIR'


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # Seeds parameter init, dropout and the data order.
    c.compilation_cache_dir = os.environ.get(CACHE_VARIABLE, '~/.cache/bigjax/jax')  # compiled
    # steps kept for the next run (jax's persistent cache; a local folder or gs://…); '' =
    # compile every time; $BIGJAX_COMPILATION_CACHE_DIR changes the default (the tests' own)

    c.data = ml_collections.ConfigDict()
    c.data.name = 'sklearn_digits'  # a tfds name, an offline builder, 'synthetic', or your own
    # files: 'text_files' (data.paths: comma-separated files or globs), 'image_folder'
    # (data.paths: a folder with a sub-folder per class, or train/ and test/ holding those) or
    # 'chat' (data.paths: conversations in .jsonl/.json/.parquet files or `datasets`; data.chat)
    # or 'preference' (data.paths: prompt, chosen and rejected answers; train.objective)
    # or 'mixture' (data.mixture: several of these, each drawn with a weight)
    c.data.paths = ''
    c.data.mixture = ()  # data.name='mixture': ((weight, {data keys of a source}), ...), e.g.
    # ((0.8, {'name': 'text_files', 'paths': 'book.txt'}), (0.2, {'name': 'chat', 'paths':
    # 'chats.jsonl'})); sources share the tokenizer and seq_len (bigjax/data/mixture.py)
    c.data.val_fraction = 0.1  # text_files: the last fraction of the characters is the eval split;
    # image_folder without train/ and test/: a fraction of each class, chosen by file name hash;
    # chat without data.chat.eval_paths: a fraction of the records, chosen by their hash
    c.data.image_shape = (32, 32, 3)  # image_folder: images are resized to (height, width, channels)
    c.data.data_dir = ''  # tfds data_dir; '' is tfds' default (~/tensorflow_datasets)
    c.data.download = True  # allow downloading/preparing a tfds dataset that is not prepared
    c.data.train_split = 'train'
    c.data.eval_split = 'test'
    c.data.normalize = 'standard'  # 'standard' (train mean/std per channel) | 'unit' ([0, 1])
    c.data.augment = ml_collections.ConfigDict()  # images, training only, on device (augment.py)
    c.data.augment.crop_padding = 0  # random crop: shift by up to this many pixels, zero fill
    c.data.augment.rotation_degrees = 0.0  # rotate by a uniform angle in +-this
    c.data.augment.scale_min = 1.0  # zoom by a uniform factor in [scale_min, scale_max]
    c.data.augment.scale_max = 1.0
    c.data.augment.horizontal_flip = False  # mirror half of the images
    c.data.text = ml_collections.ConfigDict()  # text datasets (datasets.py, text.py)
    c.data.text.task = 'auto'  # 'lm' | 'classification' | 'auto' (classification if labelled)
    c.data.text.feature = 'text'  # the tfds feature holding the text
    c.data.text.label_feature = 'label'  # classification: a ClassLabel or bool feature
    c.data.text.tokenizer = 'byte'  # 'byte' (258 ids) | 'char' | 'bpe' (learnt from the train split)
    # | 'hf:FOLDER' (a Hugging Face model's own tokenizer.json)
    c.data.text.vocab_size = 4096  # 'bpe' only
    c.data.text.tokenizer_data = ''  # char/bpe: learnt from this dataset's train_split ('' = ours)
    c.data.text.tokenizer_sample = 10 ** 8  # char/bpe: learnt from about this many characters,
    # evenly spread blocks of documents (a smaller split whole); 0 = the whole split
    c.data.text.seq_len = 256  # tokens per sequence: packed (lm) or truncated and padded
    c.data.text.keep = 'first'  # classification: a longer document's 'first' or 'last' tokens
    c.data.text.unicode_form = 'NFC'  # unicode normalisation; '' = none
    c.data.text.whitespace = 'lines'  # 'keep' | 'lines' (strip line ends) | 'collapse' (prose)
    c.data.text.drop_duplicates = True  # drop exact duplicate documents (after cleaning)
    c.data.text.document_mask = False  # LM windows: each document attends only to itself
    # (segment ids and positions restart after every end-of-document id), as flax's lm1b packs
    c.data.chat = ml_collections.ConfigDict()  # conversations (data/chat.py; data.name='chat')
    c.data.chat.format = 'auto'  # 'messages' | 'sharegpt' | 'prompt_completion' | 'alpaca' |
    # 'auto' (by each record's fields)
    c.data.chat.template = ''  # '' = the tokenizer's own chat template (else 'default') |
    # 'default' (bigjax's) | 'plain' (contents joined, answers end with eos) | a file | Jinja text
    c.data.chat.train_on = 'assistant'  # learn every 'assistant' turn, the 'last' one, or 'all'
    c.data.chat.pack = True  # several conversations per window (kept apart); False = one each
    c.data.chat.bad_records = 'error'  # 'error' (one line naming it) | 'skip' (and count)
    c.data.chat.eval_paths = ''  # eval sources like data.paths; '' = data.val_fraction held out
    c.data.chat.eval_generations = 32  # held-out prompts answered (greedy) at each eval; 0 = none
    c.data.chat.answer_tokens = 64  # the longest answer generated for them
    c.data.chat.scorer = 'exact_match'  # 'exact_match' | 'contains' | 'module:function'
    # (generated, reference) -> score in [0, 1]
    c.data.classes = ()  # classification: keep these class ids only, relabelled 0.. in this order
    c.data.train_per_class = 0  # classification: > 0 keeps the first N train examples per class
    c.data.prefetch = 2  # batches prepared on device ahead of the step; 0 = none
    c.data.on_device_max_mb = 256  # training arrays up to this size are copied to every device
    # once and batched there by index (no per-step host copy); 0 = always batch on the host
    c.data.synthetic = ml_collections.ConfigDict()  # shapes for data.name == 'synthetic'
    c.data.synthetic.kind = 'image'  # 'image' | 'text_lm' (windows of data.text.seq_len + 1)
    c.data.synthetic.vocab_size = 32768  # text_lm
    c.data.synthetic.image_shape = (28, 28, 1)
    c.data.synthetic.num_classes = 10
    c.data.synthetic.train_examples = 4096
    c.data.synthetic.eval_examples = 1024

    c.model = ml_collections.ConfigDict()
    c.model.name = 'cnn'  # a registered model: bigjax.models.MODELS.names(), or your own
    # Each model's options (bigjax.models.register): model.cnn is models/cnn.py SimpleCNN's
    # fields, model.transformer models/transformer_config.py TransformerConfig's, and a model
    # registered with options has its own section.
    for section, defaults in models.option_sections().items():
        c.model[section] = ml_collections.ConfigDict(defaults)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = 'adam'  # 'sgd' | 'momentum' | 'adam' | 'adamw'
    c.optim.learning_rate = 1e-3  # peak learning rate
    c.optim.momentum = 0.9  # 'momentum' only
    c.optim.nesterov = False  # 'momentum' only
    c.optim.b1 = 0.9  # adam/adamw
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0  # L2 (added to the gradient) or, for adamw, decoupled decay
    c.optim.l1 = 0.0  # L1: l1 * sign(w) added to the gradient of the kernels (sparser weights)
    c.optim.grad_clip_norm = 0.0  # clip gradients to this global norm; 0 = off
    c.optim.schedule = 'constant'  # 'constant' | 'step' | 'cosine'
    c.optim.warmup_steps = 0  # linear warmup from 0, before any schedule
    c.optim.step_every = 1000  # 'step': multiply the rate by step_factor every step_every steps
    c.optim.step_factor = 0.1
    c.optim.end_lr_ratio = 0.0  # 'cosine': final rate as a fraction of the peak
    c.optim.lr_multipliers = ()  # ((regex, factor), ...): rate x factor for the parameters a
    # regex matches (first match wins), e.g. (('encoder/.*', 0.1),) for a slower backbone

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 64  # global batch, split over processes and devices
    c.train.num_epochs = 10.0
    c.train.num_steps = 0  # > 0 overrides num_epochs
    c.train.eval_batch_size = 0  # 0 = batch_size
    c.train.log_every = 100  # steps between train-metric lines (the only host syncs)
    c.train.eval_every = 0  # steps between evals; 0 = once per epoch; the run always ends with one
    c.train.checkpoint_every = 0  # steps between checkpoints; 0 = once per epoch, and at the end
    c.train.eval_tasks = ''  # LMs: lm-evaluation-harness tasks scored at each eval, e.g.
    # 'arc_easy,bigjax_exceptions_mc' (metrics TASK/METRIC; bigjax/eval_harness.py); '' = none
    c.train.eval_tasks_limit = 0  # examples of each of them scored; 0 = all
    c.train.keep_checkpoints = 3
    c.train.microbatches = 1  # gradient accumulation: the batch is split into this many steps
    c.train.logits_chunk = 0  # LMs: > 0 makes the output layer's logits (and loss) this many
    # positions at a time, recomputed in the backward pass: never all (batch, length, vocab)
    c.train.objective = 'auto'  # 'auto' (the data's own: next tokens, classes; preference pairs:
    # 'dpo') | 'dpo' | 'ipo': preference objectives on data.name='preference' (bigjax/preference.py)
    c.train.preference = ml_collections.ConfigDict()
    c.train.preference.beta = 0.1  # how far the policy may move from the reference
    c.train.preference.label_smoothing = 0.0  # dpo: the share of pairs assumed mislabelled
    c.train.peak_flops = 0.0  # FLOP/s of all devices for MFU; 0 = chip table, or measured on CPU
    c.train.profile_start_step = 0  # > 0: jax.profiler trace of profile_steps steps from here
    c.train.profile_steps = 5

    c.init_from = ml_collections.ConfigDict()  # start from a pretrained checkpoint (finetune.py)
    c.init_from.path = ''  # a workdir (its checkpoints/<step>) or a checkpoint folder; '' = none
    c.init_from.step = -1  # -1 = the latest
    c.init_from.skip = ()  # regexes of parameters to initialise fresh even if present (new head)
    c.init_from.resize = ()  # regexes of parameters to interpolate to a new shape (positions)
    c.init_from.label_words = ()  # decoder classifier: per class, a text whose first token's
    # output-layer row in the LM starts the head (e.g. (' bad', ' good')); () = a zero head
    c.frozen = ()  # regexes of parameter names ('encoder/.*') not to train; no optimizer state
    c.lora_trained = ()  # with LoRA (model.transformer.lora_rank > 0), which freezes the base
    # model (an LM's output layer and embedding too, as peft): regexes of its parameters to train
    # as well (peft's modules_to_save), e.g. ('head/kernel',) for an untied output layer

    c.writers = ('tensorboard',)  # where scalars go beside metrics.jsonl (always written):
    # 'tensorboard' (<workdir>/tensorboard) and/or 'wandb' (Weights & Biases: pip install wandb)
    c.wandb = ml_collections.ConfigDict()  # the W&B run when 'wandb' is in writers (writers.py)
    c.wandb.project = 'bigjax'
    c.wandb.entity = ''  # a user or team; '' = the account's default
    c.wandb.name = ''  # the run's display name; '' = the workdir's folder name
    c.wandb.group = ''  # groups runs in the UI (e.g. a study's); '' = none
    c.wandb.tags = ()  # strings
    c.wandb.mode = 'online'  # 'online' | 'offline' (sync later: `wandb sync`) | 'disabled';
    # the environment variable WANDB_MODE, when set, wins

    c.report = ml_collections.ConfigDict()  # <workdir>/report.html (bigjax/report.py)
    c.report.enabled = True  # write it at the end of the run (launch.py --mode=report: any time)
    c.report.examples = 1024  # eval examples searched for the most confidently wrong ones
    c.report.sample_tokens = 120  # LMs: tokens sampled after each of a few eval prompts

    c.mesh = ml_collections.ConfigDict()  # device mesh axis sizes; -1 = all remaining devices
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # Logical axis -> mesh axes (a name, a tuple of names, or None = replicated).
    c.sharding_rules = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('heads', 'tensor'),
                        ('mlp', 'tensor'), ('vocab', 'tensor'), ('kv', None), ('length', None),
                        ('layers', None))
    return c


def shrink_to_smoke(config: ml_collections.ConfigDict, *, num_steps: int) -> None:
    """Makes `train` a few steps that still log, evaluate and checkpoint: the `:smoke` variants."""
    config.train.batch_size = 16
    config.train.eval_batch_size = 16
    config.train.num_steps = num_steps
    config.train.log_every = max(num_steps // 4, 1)
    config.train.eval_every = max(num_steps // 2, 1)
    config.train.checkpoint_every = max(num_steps // 2, 1)
    config.report.examples = 64
    config.report.sample_tokens = 16


TRANSFER_STAGES = ('pretrain', 'finetune', 'scratch')


def parse_stage(arg: str | None) -> tuple[str, bool]:
    """A transfer config's arg (configs/*_transfer.py): 'finetune,smoke' -> ('finetune', True);
    no arg is the pretraining, 'smoke' its smoke."""
    stage, _, smoke = (arg or 'pretrain').partition(',')
    if stage == 'smoke':
        stage, smoke = 'pretrain', 'smoke'
    if stage not in TRANSFER_STAGES or smoke not in ('', 'smoke'):
        raise ValueError(f'unknown config arg {arg!r}; use one of {TRANSFER_STAGES}, optionally '
                         'with ",smoke"')
    return stage, bool(smoke)


def config_file(path: str) -> pathlib.Path:
    """A config file named as on launch.py's command line: relative to the current folder, else
    to bigjax's own folder (so `--config=configs/cnn_digits.py` works from anywhere)."""
    given = pathlib.Path(path).expanduser()
    places = list(dict.fromkeys([pathlib.Path.cwd() / given, REPO / given]))  # one if absolute
    for file in places:
        if file.is_file():
            return file.resolve()
    raise UserError(f'config file {path!r} not found: there is no '
                    f'{" nor ".join(str(file) for file in places)}')


def from_file(reference: str) -> ml_collections.ConfigDict:
    """The config that `launch.py --config=<reference>` runs: 'configs/cnn_digits.py[:arg]',
    a path relative to the current folder or to the repository (or absolute)."""
    path, _, arg = reference.partition(':')
    file = config_file(path)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # config files import each other as configs.<name>
    spec = importlib.util.spec_from_file_location(f'configs_{file.stem}', file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def from_json(values: dict) -> ml_collections.ConfigDict:
    """A config from its config.json (lists become tuples, as config files write them); keys
    added to the schema since it was written take their defaults."""
    def tuples(value):
        if isinstance(value, dict):
            return {k: tuples(v) for k, v in value.items()}
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    def merged(defaults: dict, saved: dict) -> dict:
        return {**defaults, **{k: merged(defaults[k], v) if isinstance(v, dict) and isinstance(
            defaults.get(k), dict) else v for k, v in saved.items()}}
    config = ml_collections.ConfigDict(merged(default_config().to_dict(), tuples(values)))
    check(config)
    return config


def check(config: ml_collections.ConfigDict) -> None:
    """Raises UserError naming the first key the schema lacks or whose value has the wrong type."""
    _check_against(config, default_config(), 'config')
    if config.seed < 0:
        raise UserError(f'seed={config.seed} must be >= 0')
    decoder_classifier = (config.model.name == 'transformer_classifier'
                          and config.model.transformer.pool == 'last')
    if config.model.transformer.pool == 'last' and not decoder_classifier:
        raise UserError(f"model.transformer.pool='last' (causal, the last token) is for "
                        f"transformer_classifier; model.name={config.model.name!r} pools with "
                        "'cls' or 'mean'")
    preference.check(config)
    writers.check(config)
    if config.lora_trained and not finetune.uses_lora(config):
        raise UserError(f'lora_trained={config.lora_trained} names parameters to train beside '
                        'LoRA adapters, and LoRA is off (everything trains): set '
                        'model.transformer.lora_rank > 0 or lora_trained=()')
    if config.init_from.label_words and not (config.init_from.path and decoder_classifier):
        raise UserError("init_from.label_words starts a decoder classifier's head from a "
                        "pretrained LM: set init_from.path, model.name='transformer_classifier' "
                        "and model.transformer.pool='last'")


def _check_against(config, schema, prefix: str) -> None:
    for key, value in config.items():
        path = f'{prefix}.{key}'
        if key not in schema:
            raise UserError(f'unknown config key {path}; known keys here: {sorted(schema)}')
        expected = schema[key]
        if isinstance(expected, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise UserError(f'{path} must be a section (ConfigDict), got {value!r}')
            _check_against(value, expected, path)
        elif not _same_type(value, expected):
            raise UserError(f'{path}={value!r} has type {type(value).__name__}, '
                            f'expected {type(expected).__name__} like {expected!r}')


def _same_type(value, expected) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(expected, bool)
    if isinstance(expected, float):
        return isinstance(value, (int, float))
    if isinstance(expected, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(expected))
