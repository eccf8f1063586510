"""Train a bigjax config, sample from the LM it trained, evaluate it, or write its report.

python launch.py --config=configs/cnn_digits.py[:smoke] --workdir=DIR
python launch.py --config=configs/transformer_cpu.py --workdir=DIR --mode=sample --prompt='def '
python launch.py --config=configs/chat_exceptions.py:finetune --workdir=DIR --mode=sample \
    --conversation='[{"role": "user", "content": "..."}]'  (the answer, in the chat template)
python launch.py --config=configs/cnn_digits.py --workdir=DIR --mode=report  (DIR/report.html)
python launch.py --config=CONFIG --workdir=DIR --mode=export --export_dir=OUT  (LoRA merged;
    OUT serves as --config.init_from.path; --export_format=hf: a Hugging Face model folder)
python launch.py --config=configs/transformer_cpu.py --workdir=DIR --mode=evaluate --tasks=hellaswag,arc_easy
    [--limit=N] [--num_fewshot=K] [--apply_chat_template]  (lm-evaluation-harness on the latest
    checkpoint; bigjax_exceptions_mc / bigjax_exceptions_gen run offline; DIR/eval_harness/)
python launch.py --config=configs/transformer_tpu.py --workdir=DIR --mode=compile --topology=v5e-8
    (compiles the train and eval steps for that TPU slice on any machine: HBM per chip, FLOPs,
    a roofline estimate; DIR/compile.json)
Any config value can be overridden: --config.optim.learning_rate=3e-4 --config.train.num_steps=500.
Your own models, datasets and tasks: --import=my_pkg.my_module (repeatable) imports a module that
registers them (bigjax.models.register, bigjax.data.register, bigjax.tasks.register) before the
config is read; then e.g. --config.model.name=my_lm.
Several processes (multi-host GPU, or CPU tests): --num_processes=N --process_id=I
--coordinator_address=HOST:PORT on each; on Cloud TPU slices this is detected by itself.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/cnn_digits.py[:arg].',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the report go (resumes).')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'evaluate', 'report', 'export',
                                    'compile'],
                  'Train; sample from a trained LM; score it on lm-evaluation-harness --tasks; '
                  '(re)write the workdir\'s report.html; export its latest parameters (LoRA '
                  'adapters merged) to --export_dir; or compile the steps for --topology and '
                  'report whether they fit.')
flags.DEFINE_string('topology', '', 'compile: a TPU slice (v5e-1, v5e-8, v6e-8, v4-8, v5p-8, '
                    '...) or an NVIDIA box (a100-8, h100-8, h200-8; 8 GPUs a host).')
flags.DEFINE_integer('num_slices', 1, 'compile: slices of --topology joined over the data-center '
                     'network (mesh.data spans them).')
flags.DEFINE_string('export_dir', '', 'export: an empty or new folder for the parameters.')
flags.DEFINE_enum('export_format', 'bigjax', ['bigjax', 'hf'], 'export: a checkpoint folder for '
                  'init_from.path, or (hf) a Hugging Face model folder for transformers.')
flags.DEFINE_string('tasks', '', 'evaluate: lm-eval task names, groups or task YAML files, '
                    'comma-separated (bigjax_exceptions_mc and bigjax_exceptions_gen need no '
                    'download).')
flags.DEFINE_integer('limit', 0, 'evaluate: score the first N examples of each task; 0 = all.')
flags.DEFINE_integer('num_fewshot', -1, 'evaluate: examples shown before each question; -1 = '
                     "the task's own default.")
flags.DEFINE_bool('apply_chat_template', False, 'evaluate: ask each question in the run\'s chat '
                  'template (for instruction-tuned models), as lm-eval\'s flag of that name.')
flags.DEFINE_string('prompt', '', 'sample: the text to continue.')
flags.DEFINE_string('conversation', '', 'sample: a conversation to answer in the chat template '
                    '(JSON messages [{"role": "user", "content": "..."}], or a .json file of '
                    'them); prints the answer, up to its end of turn.')
flags.DEFINE_integer('num_tokens', 200, 'sample: how many tokens to add.')
flags.DEFINE_float('temperature', 0.8, 'sample: softmax temperature; 0 = most likely token.')
flags.DEFINE_integer('top_k', 0, 'sample: draw from the k most likely tokens only; 0 = all.')
flags.DEFINE_multi_string('import', [], 'Modules to import first (comma-separated or repeated), '
                          'e.g. one that registers your own model, dataset or task.')
flags.DEFINE_string('coordinator_address', '', 'Multi-process: HOST:PORT of process 0.')
flags.DEFINE_integer('num_processes', 1, 'Multi-process: how many processes.')
flags.DEFINE_integer('process_id', -1, 'Multi-process: this process, 0 .. num_processes - 1.')
flags.mark_flags_as_required(['config', 'workdir'])


def fail(message: str) -> None:
    print(f'error: {message}', file=sys.stderr)
    sys.exit(1)


def imported_modules(argv: list[str]) -> list[str]:
    """The modules --import names, read before absl parses the flags: the config file is loaded
    during parsing, and it may use what they register."""
    values = [argv[i + 1] if arg == '--import' and i + 1 < len(argv) else arg[len('--import='):]
              for i, arg in enumerate(argv) if arg == '--import' or arg.startswith('--import=')]
    return [name.strip() for value in values for name in value.split(',') if name.strip()]


def with_config_found(argv: list[str]) -> list[str]:
    """argv with --config's file as a full path: found from the current folder, else from
    bigjax's own, so `--config=configs/cnn_digits.py` runs from any folder."""
    from bigjax import config as config_lib
    found = list(argv)
    for i, arg in enumerate(argv):
        value_at = i + 1 if arg == '--config' and i + 1 < len(argv) else i
        prefix = '' if value_at != i else '--config='
        if arg == '--config' or arg.startswith('--config='):
            path, sep, config_arg = argv[value_at][len(prefix):].partition(':')
            found[value_at] = f'{prefix}{config_lib.config_file(path)}{sep}{config_arg}'
    return found


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with one-line errors for bad config files and overrides."""
    from bigjax import registry
    from bigjax.errors import UserError
    try:
        registry.import_modules(imported_modules(argv))
        argv = with_config_found(argv)
    except UserError as e:
        fail(str(e))
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        fail(lines[-1] if lines else str(e))
    except UserError as e:  # The config file refuses its argument (configs/hf_finetune.py).
        fail(str(e))
    except (AttributeError, KeyError) as e:  # An override names a key the config lacks.
        key = str(e).strip('"\'')
        overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
        named = [o for o in overrides if key in o[len('--config.'):].split('.')] or overrides
        own = ('; a model of your own has its options once --import names the module that '
               'registers it' if named and named[0].startswith('--config.model.') else '')
        fail(f'{named[0] if named else "--config"}: the config has no key {key!r} '
             f'(bigjax/config.py lists every key{own})')
    except Exception as e:  # The config file itself fails: a syntax error, a bad import.
        fail(f'cannot load --config: {type(e).__name__}: {e}')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # Library chatter (Orbax, tfds) off by default.
    config = flags.FLAGS.config
    try:
        config.keys()  # config_flags defers a missing config file's error to first use.
    except OSError as e:
        fail(f'cannot load the config file: {str(e).splitlines()[-1].strip()}')
    FLAGS = flags.FLAGS
    if FLAGS.mode == 'compile':
        from bigjax import aot
        aot.prepare_environment(FLAGS.topology)  # before JAX starts a backend
    from bigjax import aot, export, parallel, report, sample, train
    from bigjax.errors import UserError
    try:
        if FLAGS.mode == 'compile':
            if not FLAGS.topology:
                raise UserError('--mode=compile needs --topology, e.g. --topology=v5e-8')
            print(aot.describe(aot.compile_config(config, FLAGS.topology, FLAGS.workdir,
                                                  FLAGS.num_slices)))
            return
        parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                        FLAGS.process_id)
        if FLAGS.mode == 'sample':
            print(sample.from_workdir(config, FLAGS.workdir, FLAGS.prompt,
                                      num_tokens=FLAGS.num_tokens, temperature=FLAGS.temperature,
                                      top_k=FLAGS.top_k, seed=config.seed,
                                      conversation=FLAGS.conversation))
        elif FLAGS.mode == 'evaluate':
            from bigjax import eval_harness
            print(eval_harness.from_workdir(config, FLAGS.workdir, FLAGS.tasks, limit=FLAGS.limit,
                                            num_fewshot=FLAGS.num_fewshot,
                                            apply_chat_template=FLAGS.apply_chat_template))
        elif FLAGS.mode == 'report':
            print(report.from_workdir(config, FLAGS.workdir))
        elif FLAGS.mode == 'export':
            print(export.export(config, FLAGS.workdir, FLAGS.export_dir, FLAGS.export_format))
        else:
            train.run(config, FLAGS.workdir)
    except UserError as e:
        fail(str(e))


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
