"""An lm1b-shaped tfds corpus built offline, for benchmarks/text_pipeline.py: `train` holds N
pseudo-English sentences of ~27 words (about 175 characters, like lm1b's 30.3 M), `test` N / 100.

Words are syllable strings drawn from a Zipf law over a 60,000-word vocabulary, so BPE sees a
realistic long tail; sentences are capitalised, carry a comma now and then and end with a full
stop; about 1 % repeat an earlier sentence, for the duplicate filter. Everything is a pure
function of (size, seed): the same files on every machine. Builder configs name the size
('100k', '1m', '3m', …).

python benchmarks/pseudo_lm1b.py [--size=100k] [--smoke]   # words, characters, repeats
"""

import argparse

import numpy as np
import tensorflow_datasets as tfds

SIZES = {'1k': 1_000, '30k': 30_000, '100k': 100_000, '300k': 300_000, '1m': 1_000_000,
         '3m': 3_000_000, '10m': 10_000_000}
VOCABULARY = 60_000
SYLLABLES = [c + v for c in ('', 'b', 'c', 'd', 'f', 'g', 'h', 'l', 'm', 'n', 'p', 'r', 's',
                             't', 'v', 'w', 'st', 'th', 'tr', 'pl')
             for v in ('a', 'e', 'i', 'o', 'u', 'ea', 'ou', 'er', 'in', 'on')]


def vocabulary(rng: np.random.Generator) -> np.ndarray:
    """VOCABULARY distinct pseudo-words, shortest (most frequent) first."""
    words, seen = [], set()
    while len(words) < VOCABULARY:
        length = 1 + min(len(words) // 2000, 3) + rng.integers(0, 2)
        word = ''.join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), length))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return np.asarray(words, dtype=object)


def sentences(count: int, seed: int):
    """`count` sentences, yielded in blocks drawn with numpy (one Python join per sentence)."""
    rng = np.random.default_rng(seed)
    words = vocabulary(rng)
    zipf = 1.0 / np.arange(1, VOCABULARY + 1) ** 1.1
    cumulative = np.cumsum(zipf / zipf.sum())
    made = []
    for start in range(0, count, 10_000):
        n = min(10_000, count - start)
        lengths = np.clip(rng.poisson(27, n), 3, 80)
        ids = np.minimum(np.searchsorted(cumulative, rng.random(lengths.sum())), VOCABULARY - 1)
        drawn = words[ids]
        comma = rng.random(lengths.sum()) < 0.06
        drawn[comma] = drawn[comma] + ','
        repeat = rng.random(n) < 0.01
        for i, end in enumerate(np.cumsum(lengths)):
            if repeat[i] and made:
                sentence = made[rng.integers(0, len(made))]
            else:
                sentence = ' '.join(drawn[end - lengths[i]:end]).rstrip(',') + '.'
                sentence = sentence[0].upper() + sentence[1:]
            if len(made) < 1000:
                made.append(sentence)
            yield sentence


class PseudoLm1b(tfds.core.GeneratorBasedBuilder):
    """Pseudo-English sentences shaped like lm1b's (feature 'text'; splits train and test)."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Zipf pseudo-words, ~27 per sentence, 1 % repeats.'}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f'{n:,} sentences')
                       for name, n in SIZES.items()]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__, features=tfds.features.FeaturesDict({'text': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        del dl_manager  # Generated.
        n = SIZES[self.builder_config.name]
        return {'train': self._generate_examples(n, seed=0),
                'test': self._generate_examples(max(n // 100, 100), seed=1)}

    def _generate_examples(self, count: int, seed: int):
        for i, sentence in enumerate(sentences(count, seed)):
            yield i, {'text': sentence}


def main() -> None:
    """Prints a size's train sentences: words and characters on average, the share repeated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', default='100k', choices=SIZES)
    parser.add_argument('--smoke', action='store_true', help='1,000 sentences (--size=1k)')
    args = parser.parse_args()
    size = '1k' if args.smoke else args.size
    drawn = list(sentences(SIZES[size], seed=0))
    print(f'{"size":>5s} {"sentences":>10s} {"words":>6s} {"characters":>10s} {"repeats":>8s}')
    print(f'{size:>5s} {len(drawn):10,d} {np.mean([len(s.split()) for s in drawn]):6.1f} '
          f'{np.mean([len(s) for s in drawn]):10.1f} {1 - len(set(drawn)) / len(drawn):8.2%}')


if __name__ == '__main__':
    main()
