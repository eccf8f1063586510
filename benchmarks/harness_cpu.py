"""lm-evaluation-harness on CPU, as a user gets it: a multiple-choice task of N questions (which
exception an `except` clause catches, 7 choices, from python_exceptions' train split) scored on
transformer_cpu's model shape by bigjax (einops attention and the fused C++ kernel) and, on the
same weights exported for transformers, by lm-eval's own hf backend (torch), one after another
in this process: seconds, questions a second, and speed against the hf backend (> 1: faster). The weights are
freshly initialised (speed does not depend on them), and the three give the same accuracy.

python benchmarks/harness_cpu.py [--questions=1000] [--smoke]
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--questions', type=int, default=1000)
    parser.add_argument('--smoke', action='store_true', help='tiny model, 14 questions')
    args = parser.parse_args(argv)
    import jax
    import lm_eval
    from etils import epath
    from flax import linen as nn
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from bigjax import export, harness_model
    from bigjax import plan as plan_lib
    from bigjax.data import harness_tasks
    from configs import transformer_cpu

    config = transformer_cpu.get_config('smoke' if args.smoke else None)
    questions = 14 if args.smoke else args.questions
    if args.smoke:  # a BPE, so the export has a tokenizer for transformers
        config.data.text.tokenizer, config.data.text.vocab_size = 'bpe', 512
        config.data.text.tokenizer_sample = 200_000
    rows, _ = harness_tasks.questions(config.data, 'train', questions)
    folder = tempfile.mkdtemp(prefix='bigjax_harness_bench_')
    names = ('bench_exceptions_mc', 'bench_exceptions_gen')
    harness_tasks.write(os.path.join(folder, 'tasks'), rows, names, 'bench_exceptions')
    manager = TaskManager(include_path=os.path.join(folder, 'tasks'))
    print(f'{len(rows)} questions x 7 choices; model {config.model.transformer.width} wide, '
          f'{config.model.transformer.depth} deep, max_len {config.model.transformer.max_len}, '
          f'{jax.device_count()} device(s)')
    print(f'{"scorer":<18}{"seconds":>9}{"questions/s":>13}{"vs hf":>8}{"accuracy":>10}')
    results = {}

    def score(name, lm):
        start = time.perf_counter()
        out = lm_eval.simple_evaluate(model=lm, tasks=[names[0]], task_manager=manager,
                                      bootstrap_iters=0)
        results[name] = (time.perf_counter() - start, out['results'][names[0]]['acc,none'])

    params = None
    for attention in ('einops', 'fused'):
        config.model.transformer.attention = attention
        plan = plan_lib.plan(config)
        if params is None:
            params = jax.jit(lambda rng: nn.unbox(plan.init(rng)).params,
                             out_shardings=plan.state_shardings.params)(jax.random.PRNGKey(0))
            export.hf_model(plan, jax.device_get(params), config.model.transformer.to_dict(),
                            epath.Path(folder) / 'hf')
        score(f'bigjax {attention}', harness_model.BigjaxLM(plan=plan, params=params))
    score('hf (torch)', HFLM(pretrained=os.path.join(folder, 'hf'), device='cpu',
                             batch_size=config.train.eval_batch_size))
    hf_seconds = results['hf (torch)'][0]
    for name, (seconds, accuracy) in results.items():
        print(f'{name:<18}{seconds:>9.1f}{len(rows) / seconds:>13.2f}{hf_seconds / seconds:>7.2f}x'
              f'{accuracy:>10.3f}')


if __name__ == '__main__':
    main()
