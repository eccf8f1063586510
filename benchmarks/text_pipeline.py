"""Text data at lm1b scale: time and peak memory from prepared tfds files to the cached tokens.

Builds an lm1b-shaped corpus itself (benchmarks/pseudo_lm1b.py: pseudo-English sentences of ~27
words in array_record files, prepared once under --data_dir and not timed), then, each run in a
fresh process with the bigjax cache of that corpus deleted first, opens it with
configs/transformer_tpu.py's data config (BPE 32,768 learnt from data.text.tokenizer_sample
characters, whitespace collapse, windows of 512): reading, cleaning, the tokenizer, tokenizing and
packing the train and test splits. Prints sentences per minute, the tokenizer's share, the main
thread's CPU time (the serial part: reading, cleaning, packing, and encoding when the BPE runs in
line), peak RSS (VmHWM over the process's life, imports included), the cache size and the load
average the run saw (other work on the machine slows it), and extrapolates to lm1b's 30.3 M
training sentences. --old=COMMIT also runs bigjax as of that commit (git archive into a temporary
folder) on --old_sizes, beside the current code on the same corpus, and says whether both wrote
the same tokens.

python benchmarks/text_pipeline.py [--sizes=1m,3m] [--old=3b08800 --old_sizes=100k]
python benchmarks/text_pipeline.py --reads --sizes=1m   # read rates alone
python benchmarks/text_pipeline.py --smoke [--reads]     # 1,000 sentences
"""

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM1B_TRAIN_SENTENCES = 30_301_028  # tfds lm1b 1.1.0, split train


def process_cpu_seconds() -> float:
    """User and system time of all this process's threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak resident memory (ru_maxrss would include the parent's, from before
    exec)."""
    with open('/proc/self/status') as status:
        [kb] = [line.split()[1] for line in status if line.startswith('VmHWM:')]
    return int(kb) / 1024


def worker(size: str, data_dir: str) -> dict:
    """Opens pseudo_lm1b/<size> as transformer_tpu.py's data, with bigjax imported from the
    first entry of sys.path; returns what it measured."""
    sys.path.append(REPO)  # after the bigjax under test: benchmarks.pseudo_lm1b, configs
    import numpy as np
    import tensorflow_datasets as tfds

    import benchmarks.pseudo_lm1b  # noqa: F401  (registers the builder)
    from bigjax import data
    from bigjax.data import datasets
    from configs import transformer_tpu
    baseline = peak_rss_mb()
    config = transformer_tpu.get_config().data
    config.name, config.data_dir = f'pseudo_lm1b/{size}', data_dir
    shutil.rmtree(os.path.join(data_dir, 'bigjax_cache', 'pseudo_lm1b', size), ignore_errors=True)
    timed = {'tokenizer': 0.0, 'tokenizer_main_thread': 0.0}
    learn = datasets._tokenizer

    def timed_tokenizer(*args):
        start, main_thread = time.perf_counter(), time.thread_time()
        tokenizer = learn(*args)
        timed['tokenizer'] += time.perf_counter() - start
        timed['tokenizer_main_thread'] += time.thread_time() - main_thread
        timed['peak_rss_after_tokenizer_mb'] = peak_rss_mb()
        return tokenizer

    datasets._tokenizer = timed_tokenizer
    load = os.getloadavg()[0]
    start, main_thread, cpu = time.perf_counter(), time.thread_time(), process_cpu_seconds()
    dataset = data.open_dataset(config)
    seconds, main_thread = time.perf_counter() - start, time.thread_time() - main_thread
    cpu, peak = process_cpu_seconds() - cpu, peak_rss_mb()  # before the hash maps the tokens in
    tokens = dataset.train.arrays['tokens']
    splits = tfds.builder(config.name, data_dir=data_dir).info.splits
    cache = os.path.join(data_dir, 'bigjax_cache', 'pseudo_lm1b', size)
    digest = hashlib.sha256()
    for start_row in range(0, len(tokens), 1 << 16):
        digest.update(np.ascontiguousarray(tokens[start_row:start_row + (1 << 16)]).tobytes())
    return {'size': size, 'sentences': splits['train'].num_examples + splits['test'].num_examples,
            'seconds': seconds, 'tokenizer_seconds': timed['tokenizer'],
            'cpu_seconds': cpu, 'main_thread_cpu_seconds': main_thread,
            'tokens_main_thread_cpu_seconds': main_thread - timed['tokenizer_main_thread'],
            'load_average': (load + os.getloadavg()[0]) / 2,
            'encodes_in_parallel': getattr(dataset.tokenizer, 'encodes_in_parallel', True),
            'peak_rss_after_tokenizer_mb': timed['peak_rss_after_tokenizer_mb'],
            'peak_rss_mb': peak, 'rss_after_imports_mb': baseline,
            'tokens_per_sentence': tokens.shape[0] * (tokens.shape[1] - 1)
            / splits['train'].num_examples, 'tokens_sha256': digest.hexdigest()[:16],
            'cache_bytes': sum(os.path.getsize(os.path.join(root, f))
                               for root, _, files in os.walk(cache) for f in files)}


def read_rates(size: str, data_dir: str) -> dict[str, float]:
    """Records per second reading pseudo_lm1b/<size>'s train split: example by example (what
    bigjax did before), tfds' batched __getitems__, bigjax's read_scalars, and array_record's
    raw read_all (bytes only)."""
    sys.path.insert(0, REPO)
    import tensorflow_datasets as tfds
    from array_record.python.array_record_module import ArrayRecordReader

    import benchmarks.pseudo_lm1b  # noqa: F401
    from bigjax.config import default_config
    from bigjax.data import sources
    builder = tfds.builder(f'pseudo_lm1b/{size}', data_dir=data_dir)
    config = default_config().data
    config.data_dir = data_dir
    split = sources.open_split(builder, 'train', config)
    n = len(split.source)

    def rate(read, count):
        start = time.perf_counter()
        read(count)
        return count / (time.perf_counter() - start)

    def one_by_one(count):
        for i, _ in zip(range(count), split.source):
            pass

    def tfds_batches(count):
        for start in range(0, count, 1024):
            split.source.__getitems__(list(range(start, min(start + 1024, count))))

    def bigjax_ranges(count):
        for start in range(0, count, 1024):
            sources.read_scalars(split, builder, ('text',), start, min(start + 1024, count))

    def raw(count):
        for file in split.files:
            ArrayRecordReader(os.fspath(file.filename)).read_all()

    return {'example by example (bigjax before)': rate(one_by_one, min(n, 20_000)),
            'tfds source.__getitems__, 1,024 at a time': rate(tfds_batches, min(n, 200_000)),
            'bigjax sources.read_scalars (text), 1,024 at a time': rate(bigjax_ranges, n),
            'array_record ArrayRecordReader.read_all (raw bytes)': rate(raw, n)}


def prepare(size: str, data_dir: str) -> None:
    """Builds pseudo_lm1b/<size> under data_dir unless it is there."""
    sys.path.insert(0, REPO)
    import tensorflow_datasets as tfds

    import benchmarks.pseudo_lm1b  # noqa: F401
    builder = tfds.builder(f'pseudo_lm1b/{size}', data_dir=data_dir)
    if not builder.is_prepared():
        start = time.perf_counter()
        builder.download_and_prepare(file_format='array_record')
        print(f'prepared pseudo_lm1b/{size} in {time.perf_counter() - start:.0f} s (not timed '
              'below)', flush=True)


def run(size: str, data_dir: str, code: str) -> dict:
    """worker() in a fresh process with bigjax from `code`."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), '--worker', f'--size={size}',
                          f'--data_dir={data_dir}'], cwd=code, check=True, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=code)).stdout
    return json.loads(out.strip().splitlines()[-1])


def show(name: str, r: dict) -> None:
    rest = r['seconds'] - r['tokenizer_seconds']
    print(f'{name:9s} {r["size"]:>5s} {r["sentences"]:>10,d} {r["seconds"]:8.1f} '
          f'{r["tokenizer_seconds"]:9.1f} {r["sentences"] / r["seconds"] * 60 / 1e6:9.2f} '
          f'{r["sentences"] / rest * 60 / 1e6:9.2f} {r["cpu_seconds"]:8.1f} '
          f'{r["main_thread_cpu_seconds"]:8.1f} {r["peak_rss_after_tokenizer_mb"]:8.0f} '
          f'{r["peak_rss_mb"]:8.0f} {r["rss_after_imports_mb"]:8.0f} '
          f'{r["cache_bytes"] / 2**20:8.0f} {r["load_average"]:5.1f} {r["tokens_sha256"]}',
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='1m,3m')
    parser.add_argument('--old', default='', help='a commit to run side by side')
    parser.add_argument('--old_sizes', default='100k')
    parser.add_argument('--reads', action='store_true', help='read rates only, on the first '
                        'of --sizes')
    parser.add_argument('--data_dir', default=os.path.join(tempfile.gettempdir(),
                                                           'bigjax_text_pipeline'))
    parser.add_argument('--smoke', action='store_true',
                        help='--sizes=1k: 1,000 sentences (and 100 test), no --old')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--size', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.size, args.data_dir)))
        return
    if args.smoke:
        args.sizes, args.old = '1k', ''
    sizes, old_sizes = args.sizes.split(','), args.old_sizes.split(',') if args.old else []
    for size in dict.fromkeys(old_sizes + sizes):
        prepare(size, args.data_dir)
    if args.reads:
        rates = read_rates(sizes[0], args.data_dir)
        reference = next(iter(rates.values()))
        for name, rate in rates.items():
            print(f'{name:52s} {rate:10,.0f} records/s {rate / reference:6.1f}x')
        return
    print(f'{"code":9s} {"size":>5s} {"sentences":>10s} {"seconds":>8s} {"tokenizer":>9s} '
          f'{"M sent/min":>9s} {"w/o tok.":>9s} {"CPU s":>8s} {"main CPU":>8s} {"peak tok":>8s} '
          f'{"peak MB":>8s} {"imports":>8s} {"cache MB":>8s} {"load":>5s} tokens sha256')
    results = []
    with tempfile.TemporaryDirectory() as old_code:
        if args.old:
            archive = subprocess.run(['git', '-C', REPO, 'archive', args.old, 'bigjax', 'configs'],
                                     check=True, capture_output=True).stdout
            subprocess.run(['tar', '-x', '-C', old_code], input=archive, check=True)
        for size in old_sizes:
            show(f'old {args.old[:5]}', run(size, args.data_dir, old_code))
            show('new', run(size, args.data_dir, REPO))
        for size in sizes:
            results.append(run(size, args.data_dir, REPO))
            show('new', results[-1])
    if results:
        last = results[-1]
        per_sentence = (last['seconds'] - last['tokenizer_seconds']) / last['sentences']
        minutes = (last['tokenizer_seconds'] + per_sentence * LM1B_TRAIN_SENTENCES) / 60
        cache_gb = last['cache_bytes'] / last['sentences'] * LM1B_TRAIN_SENTENCES / 2**30
        serial = last['tokens_main_thread_cpu_seconds'] / last['sentences']
        floor = (last['tokenizer_seconds'] + serial * LM1B_TRAIN_SENTENCES) / 60
        print(f'\n{last["tokens_per_sentence"]:.1f} tokens a sentence. lm1b '
              f'({LM1B_TRAIN_SENTENCES:,} training sentences), extrapolated from '
              f'{last["size"]}: {minutes:.0f} minutes on this machine, cache {cache_gb:.1f} GB, '
              f'peak RSS {last["peak_rss_mb"]:.0f} MB + 8 bytes a sentence for the duplicate '
              f'filter ({8 * LM1B_TRAIN_SENTENCES / 2**20:.0f} MB, twice that while merging). '
              + (f'With the encoding spread over many cores, the serial part (the main thread: '
                 f'{serial * 1e6:.0f} us a sentence) plus this tokenizer time is {floor:.0f} '
                 'minutes.' if last['encodes_in_parallel'] else
                 'The BPE encoded in line (tokenizers.PieceMemo, a host of at most '
                 'MEMO_MAX_CPUS cores); with more cores it runs on its own threads.'))


if __name__ == '__main__':
    main()
