//! VM names: one validator, used by the CLI before any request and again by
//! the daemon for any caller. A name becomes a hostname, a DNS label, a kernel
//! command-line token and a path fragment, so its grammar is the narrowest of
//! those: an RFC 1123 label in lowercase. Names are never normalised.

use rand::RngExt;

/// Why a VM name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("VM name is empty; use 1-63 characters: lowercase letters, digits and '-'")]
    Empty,
    #[error("VM name {0:?} is {1} characters long; the limit is 63")]
    TooLong(String, usize),
    #[error(
        "VM name {name:?} contains {ch:?}; use only lowercase letters a-z, digits 0-9 and '-'"
    )]
    BadChar { name: String, ch: char },
    #[error(
        "VM name {0:?} starts or ends with '-'; names must start and end with a letter or digit"
    )]
    EdgeHyphen(String),
}

/// Longest accepted name (one DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// Validates a VM name: 1-63 chars of `[a-z0-9-]`, no leading or trailing `-`.
pub fn validate_vm_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar {
            name: name.to_string(),
            ch,
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.to_string(), name.len()));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::EdgeHyphen(name.to_string()));
    }
    Ok(())
}

const ADJECTIVES: &[&str] = &[
    "brisk", "calm", "eager", "fuzzy", "gentle", "happy", "jolly", "keen", "lucky", "mellow",
    "nimble", "proud", "quiet", "rapid", "shy", "tidy", "vivid", "witty", "zesty", "bold",
];
const NOUNS: &[&str] = &[
    "otter", "falcon", "badger", "heron", "lynx", "marmot", "newt", "panda", "quokka", "raven",
    "salmon", "tapir", "urchin", "walrus", "yak", "zebra", "bison", "cobra", "dingo", "egret",
];

/// A fresh, valid, human-friendly name such as `brisk-otter-4821`.
pub fn generate_vm_name() -> String {
    let mut rng = rand::rng();
    let a = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let n = NOUNS[rng.random_range(0..NOUNS.len())];
    let num: u16 = rng.random_range(1000..10000);
    format!("{a}-{n}-{num}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_name_table() {
        let long63 = "a".repeat(63);
        let long64 = "a".repeat(64);
        let cases: &[(&str, bool)] = &[
            ("box", true),
            ("my-vm-2", true),
            ("12345", true),
            (&long63, true),
            (&long64, false),
            ("", false),
            ("has space", false),
            ("new\nline", false),
            ("tab\there", false),
            ("dot.name", false),
            ("slash/name", false),
            ("box/../evil", false),
            ("colon:name", false),
            ("eq=name", false),
            ("quote\"name", false),
            ("single'quote", false),
            ("ctrl\u{7}bell", false),
            ("nul\0byte", false),
            ("del\u{7f}", false),
            ("caf\u{e9}", false),
            ("\u{43c}\u{438}\u{440}", false),
            ("Upper", false),
            ("MYVM", false),
            ("-lead", false),
            ("trail-", false),
            ("-", false),
            ("under_score", false),
        ];
        for (name, ok) in cases {
            assert_eq!(
                validate_vm_name(name).is_ok(),
                *ok,
                "name {name:?}: {:?}",
                validate_vm_name(name)
            );
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = validate_vm_name("My VM").unwrap_err().to_string();
        assert!(e.contains("lowercase"), "{e}");
    }

    #[test]
    fn generated_names_are_valid() {
        for _ in 0..200 {
            let n = generate_vm_name();
            validate_vm_name(&n).unwrap();
        }
    }
}
