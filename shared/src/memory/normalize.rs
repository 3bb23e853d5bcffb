//! Normalised note text and its content hash: the key of exact dedup.
//!
//! Two notes are exact duplicates when their normalised texts are equal. Normalisation folds
//! what does not change a note's meaning:
//! - case (Unicode lowercase);
//! - the diacritics of Arabic transliteration (`ṣabr` = `sabr`, `tawakkul`, `shukr` with or without
//!   macrons and dots below) and the ʿayn/hamza marks (`duʿāʾ` = `dua`);
//! - apostrophes inside words (`don't` = `dont`, `Allah’s` = `Allahs`);
//! - every other punctuation or symbol character, which becomes a word break;
//! - runs of whitespace, and leading/trailing whitespace.
//!
//! Digits and letters are kept as they are, so `3 times` and `5 times` stay different.

use sha2::{Digest, Sha256};

/// The normalised form of a note: lowercase words separated by single spaces.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for ch in text.chars() {
        if is_dropped_mark(ch) {
            continue;
        }
        if ch.is_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            for lower in ch.to_lowercase() {
                out.push(fold_diacritic(lower));
            }
        } else {
            pending_space = true;
        }
    }
    out
}

/// The sha256 (lowercase hex) of [`normalize`]d text: stored as `memory_notes.content_hash`.
pub fn content_hash(text: &str) -> String {
    hex::encode(Sha256::digest(normalize(text).as_bytes()))
}

/// Collapses whitespace runs to one space and trims; drops control characters.
pub fn collapse_whitespace(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Characters removed without leaving a word break: apostrophes inside words, the ʿayn and hamza
/// marks of transliteration, and combining diacritics.
fn is_dropped_mark(ch: char) -> bool {
    matches!(
        ch,
        '\'' | '\u{2019}'
            | '\u{2018}'
            | '\u{02BC}'
            | '\u{02BB}'
            | '\u{02BE}'
            | '\u{02BF}'
            | '\u{02C8}'
            | '`'
            | '\u{00B4}'
    ) || ('\u{0300}'..='\u{036F}').contains(&ch)
}

/// Folds the precomposed Latin letters used in Arabic transliteration to their base letter.
fn fold_diacritic(ch: char) -> char {
    match ch {
        'ā' | 'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' | 'ă' | 'ą' => 'a',
        'ī' | 'í' | 'ì' | 'î' | 'ï' => 'i',
        'ū' | 'ú' | 'ù' | 'û' | 'ü' => 'u',
        'ē' | 'é' | 'è' | 'ê' | 'ë' => 'e',
        'ō' | 'ó' | 'ò' | 'ô' | 'ö' | 'õ' => 'o',
        'ḥ' | 'ḩ' | 'ẖ' => 'h',
        'ṣ' | 'ş' | 'š' => 's',
        'ḍ' | 'ḏ' => 'd',
        'ṭ' | 'ṯ' => 't',
        'ẓ' | 'ž' | 'ż' => 'z',
        'ġ' | 'ğ' => 'g',
        'ḵ' => 'k',
        'ç' => 'c',
        'ñ' => 'n',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_punctuation_and_whitespace_are_folded() {
        assert_eq!(
            normalize("  Patience is the KEY   to relief!! "),
            "patience is the key to relief"
        );
        assert_eq!(
            normalize("Patience, is the key -- to relief."),
            normalize("patience is the key to relief")
        );
        assert_eq!(normalize("Don't despair"), "dont despair");
        assert_eq!(normalize("Don’t despair"), "dont despair");
        assert_eq!(normalize("\t\n"), "");
    }

    #[test]
    fn transliteration_marks_are_folded() {
        assert_eq!(normalize("Ṣabr and tawakkul"), "sabr and tawakkul");
        assert_eq!(normalize("duʿāʾ"), "dua");
        assert_eq!(normalize("Shukr"), normalize("shukr."));
    }

    #[test]
    fn numbers_and_words_are_kept_apart() {
        assert_ne!(normalize("pray 3 times"), normalize("pray 5 times"));
        assert_eq!(normalize("well-being"), "well being");
    }

    #[test]
    fn hash_is_sha256_hex_of_the_normalised_text() {
        let h = content_hash("Patience is the key to relief.");
        assert_eq!(h.len(), 64);
        assert_eq!(h, content_hash("patience is the key to relief"));
        assert_ne!(h, content_hash("patience is the key to relief now"));
    }

    #[test]
    fn whitespace_collapse_keeps_punctuation() {
        assert_eq!(collapse_whitespace("  a\n\n b\t c. \u{0007}"), "a b c.");
    }
}
