//! Realistic memory notes for the benchmarks: sentences of the kind the consumer keeps (a
//! reflection on a virtue, where it helped, a question about practising it), made
//! deterministically from templates and small vocabularies, so a run is repeatable and the
//! embeddings are real model outputs with the clustering of real notes (many notes on the same
//! few virtues), which random unit vectors do not have and which flatters no prefilter.

/// Deterministic xorshift generator (no dependency, same sequence on every platform).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[(self.next() % words.len() as u64) as usize]
    }
}

const OPENERS: &[&str] = &[
    "I want to remember that",
    "Today I understood that",
    "My grandmother used to say that",
    "I keep forgetting that",
    "It struck me that",
    "I noticed again that",
    "Our imam reminded us that",
    "Reading tonight, I saw that",
    "A friend told me that",
    "I learned the hard way that",
];

const VIRTUES: &[&str] = &[
    "patience",
    "gratitude",
    "trust in God",
    "forgiving others",
    "giving charity",
    "honesty",
    "humility",
    "the night prayer",
    "fasting on Mondays",
    "kindness to my parents",
    "remembering God",
    "contentment with little",
    "generosity with time",
    "sincerity in work",
    "repentance",
    "keeping promises",
    "controlling my anger",
    "visiting the sick",
    "seeking knowledge",
    "silence when angry",
    "smiling at people",
    "caring for neighbours",
    "hospitality to guests",
    "modesty",
    "courage to speak the truth",
    "mercy to animals",
    "lowering my gaze",
    "good manners at home",
    "reading the Quran daily",
    "making supplication",
    "patience with my teenage son",
    "gentleness with my employees",
    "avoiding backbiting",
    "waking up for the dawn prayer",
    "paying debts on time",
    "sharing food with neighbours",
    "thinking well of others",
    "being just with my children",
    "saying a kind word",
    "guarding my tongue online",
    "keeping ties with relatives",
    "hiding the faults of others",
];

const EFFECTS: &[&str] = &[
    "brings relief after hardship",
    "softens a hard heart",
    "makes small blessings visible",
    "keeps resentment from growing",
    "opens doors that seemed closed",
    "calms my worries about money",
    "protects my friendships",
    "shows me what really matters",
    "brings peace before sleep",
    "makes ordinary work meaningful",
    "is harder than it sounds",
    "takes years to build",
    "is tested most by family",
    "costs nothing but effort",
    "changes how my children behave",
    "heals old quarrels",
    "turns loss into growth",
    "keeps me honest with myself",
    "is easier in company",
    "starts with small daily habits",
    "needs a clear intention first",
    "feels awkward at the beginning",
    "was my mother's quiet strength",
    "makes the house feel lighter",
    "removes the fear of tomorrow",
    "is rewarded even when nobody thanks me",
    "spreads to the people around me",
    "brings unexpected provision",
    "is what I regret neglecting most",
    "stops me from wasting the evening",
];

const CONTEXTS: &[&str] = &[
    "during illness",
    "at work",
    "after losing someone",
    "while raising children",
    "when money is short",
    "in traffic",
    "during Ramadan",
    "in an argument",
    "while travelling",
    "at the hospital",
    "when friends disappoint me",
    "before exams",
    "in old age",
    "after a failure",
    "with difficult colleagues",
    "in a new city",
    "when nobody is watching",
    "on busy mornings",
    "with my spouse",
    "when I am tired",
    "on long night shifts",
    "at my daughter's school",
    "during the pilgrimage",
    "while caring for my grandmother",
    "after moving house",
    "in the middle of a divorce",
    "when business is slow",
    "on social media",
    "at family weddings",
    "during the winter nights",
    "while looking for a job",
    "when I am praised",
    "with strangers on the bus",
    "in the waiting room",
];

const QUESTIONS: &[&str] = &[
    "How can I practise {v} {c}?",
    "Why is {v} so hard for me {c}?",
    "What did the scholars say about {v} {c}?",
    "Is {v} still rewarded if I struggle with it {c}?",
    "How do I teach my children {v}?",
    "What is the first step towards {v}?",
];

const RELATIVES: &[&str] = &[
    "mother",
    "father",
    "sister",
    "brother",
    "son",
    "daughter",
    "uncle",
    "best friend",
    "neighbour",
    "teacher",
];

const FACTS: &[&str] = &[
    "is recovering from surgery",
    "started a new job",
    "moved abroad last year",
    "is preparing for the pilgrimage",
    "lost their father recently",
    "is learning Arabic",
    "struggles with debt",
    "just had a baby",
    "stopped praying for a while",
    "volunteers at the food bank",
];

const TAILS: &[&str] = &[
    "",
    "",
    ", as my grandfather taught me",
    ", and I want my son to learn it",
    ", even on the days I feel weak",
    ", especially after the dawn prayer",
    ", more than any book told me",
    ", which surprised me",
    ", though I often fail at it",
    ", if I start before I feel ready",
    ", and the change shows in my sleep",
    ", when I stop comparing myself to others",
];

const ACTIONS: &[&str] = &[
    "call my aunt",
    "read one page of tafsir",
    "give a small coin to charity",
    "walk to the mosque",
    "write down three blessings",
    "switch off my phone at dinner",
    "visit the old man next door",
    "fast",
    "pray the night prayer",
    "apologise first after an argument",
    "cook for a neighbour",
    "memorise a short surah",
    "help at the community kitchen",
    "stay silent instead of complaining",
    "thank my wife for something specific",
    "teach my daughter a supplication",
];

const WHENS: &[&str] = &[
    "every Monday",
    "before work",
    "on Friday evenings",
    "after the night prayer",
    "once a week",
    "during my lunch break",
    "on the train home",
    "every morning this month",
    "before I sleep",
    "at the weekend",
];

const PURPOSES: &[&str] = &[
    "to keep my heart soft",
    "so that gratitude becomes a habit",
    "to break my habit of anger",
    "because my father did it",
    "to get closer to God",
    "to be less attached to money",
    "so my children see it",
    "to fight my laziness",
    "to make up for last year",
    "to stay humble at work",
];

/// One note from `rng`: a reflection (most), a plan, a question or a personal fact.
fn note(rng: &mut Rng) -> String {
    let (v, c) = (rng.pick(VIRTUES), rng.pick(CONTEXTS));
    match rng.next() % 12 {
        0..=5 => format!(
            "{} {v} {} {c}{}.",
            rng.pick(OPENERS),
            rng.pick(EFFECTS),
            rng.pick(TAILS)
        ),
        6 | 7 => format!(
            "This week I will {} {} {}.",
            rng.pick(ACTIONS),
            rng.pick(WHENS),
            rng.pick(PURPOSES)
        ),
        8 | 9 => rng.pick(QUESTIONS).replace("{v}", v).replace("{c}", c),
        _ => format!(
            "My {} {}, and {v} helps me support them {c}.",
            rng.pick(RELATIVES),
            rng.pick(FACTS)
        ),
    }
}

/// `n` notes from stream `seed` (the same arguments give the same notes).
pub fn realistic_notes(seed: u64, n: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| note(&mut rng)).collect()
}

/// A saying and a question for one bench message, from stream `seed` (disjoint from the seeded
/// notes' streams when the seeds differ).
pub fn message_texts(seed: u64, i: usize) -> (String, String) {
    let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    (note(&mut rng), note(&mut rng))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_notes_and_another_seed_others() {
        assert_eq!(realistic_notes(1, 50), realistic_notes(1, 50));
        assert_ne!(realistic_notes(1, 50), realistic_notes(2, 50));
    }

    #[test]
    fn notes_are_varied() {
        let notes = realistic_notes(3, 2_000);
        let distinct: std::collections::BTreeSet<_> = notes.iter().collect();
        assert!(distinct.len() > 1_800, "{} distinct", distinct.len());
    }
}
