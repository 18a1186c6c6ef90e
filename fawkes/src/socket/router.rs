//! Topic routing: exact topics and `prefix*` patterns, first match wins.

use std::fmt;

/// A route pattern: an exact topic, or a prefix ending in `*` (PROTOCOL §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    prefix: bool,
}

/// A pattern with `*` anywhere but at the end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic pattern `{0}`: `*` is only allowed as the last character")]
pub struct InvalidPattern(pub String);

impl TopicPattern {
    /// Parses `"room:lobby"` (exact) or `"room:*"` (prefix).
    pub fn parse(pattern: &str) -> Result<Self, InvalidPattern> {
        match pattern.find('*') {
            None => Ok(TopicPattern {
                text: pattern.to_owned(),
                prefix: false,
            }),
            Some(i) if i + 1 == pattern.len() => Ok(TopicPattern {
                text: pattern[..i].to_owned(),
                prefix: true,
            }),
            Some(_) => Err(InvalidPattern(pattern.to_owned())),
        }
    }

    /// Whether `topic` is routed by this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        if self.prefix {
            topic.starts_with(&self.text)
        } else {
            topic == self.text
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_prefix() {
        let exact = TopicPattern::parse("lobby").unwrap();
        assert!(exact.matches("lobby"));
        assert!(!exact.matches("lobby:1"));
        let prefix = TopicPattern::parse("room:*").unwrap();
        assert!(prefix.matches("room:1"));
        assert!(prefix.matches("room:"));
        assert!(!prefix.matches("rooms:1"));
        let loose = TopicPattern::parse("foo*").unwrap();
        assert!(loose.matches("food:1"));
        assert_eq!(loose.to_string(), "foo*");
    }

    #[test]
    fn star_only_at_end() {
        assert!(TopicPattern::parse("a*b").is_err());
        assert!(TopicPattern::parse("*").unwrap().matches("anything"));
    }
}
