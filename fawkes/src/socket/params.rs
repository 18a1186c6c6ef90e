//! Connect params: the query string as Phoenix hands it to `connect`.

use serde_json::{Map, Value};

/// The query parameters of a connection, as Phoenix decodes them: string
/// values, with bracket keys (`user[id]=1`, `ids[]=1`) nested into objects
/// and arrays.
///
/// ```
/// use fawkes::Params;
///
/// let p = Params::from_query("token=abc&user[id]=7&vsn=2.0.0");
/// assert_eq!(p.get_str("token"), Some("abc"));
/// assert_eq!(p.get("user").unwrap()["id"], "7");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(Map<String, Value>);

impl Params {
    /// Decodes a URL query string (without the leading `?`).
    pub fn from_query(query: &str) -> Self {
        let mut map = Map::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            insert(&mut map, &key, Value::String(value.into_owned()));
        }
        Params(map)
    }

    /// The value of a parameter.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// The value of a parameter when it is a plain string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    /// All parameters.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// Inserts `a[b][c]=v` as `{"a":{"b":{"c":v}}}` and `a[]=v` as `{"a":[v]}`;
/// a later plain key replaces an earlier one, as in Plug.
fn insert(map: &mut Map<String, Value>, key: &str, value: Value) {
    let Some(open) = key.find('[').filter(|&i| i > 0 && key.ends_with(']')) else {
        map.insert(key.to_owned(), value);
        return;
    };
    let (head, rest) = key.split_at(open);
    let parts: Vec<&str> = rest[1..rest.len() - 1].split("][").collect();
    let mut slot = map
        .entry(head.to_owned())
        .or_insert_with(|| empty_for(parts[0]));
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if part.is_empty() {
            if !slot.is_array() {
                *slot = Value::Array(Vec::new());
            }
            let Value::Array(items) = slot else { return };
            if last {
                items.push(value);
                return;
            }
            items.push(empty_for(parts[i + 1]));
            let Some(next) = items.last_mut() else { return };
            slot = next;
        } else {
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            let Value::Object(obj) = slot else { return };
            if last {
                obj.insert((*part).to_owned(), value);
                return;
            }
            slot = obj
                .entry((*part).to_owned())
                .or_insert_with(|| empty_for(parts[i + 1]));
        }
    }
}

fn empty_for(part: &str) -> Value {
    if part.is_empty() {
        Value::Array(Vec::new())
    } else {
        Value::Object(Map::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_and_nested_keys() {
        let p = Params::from_query("a=1&user%5Bid%5D=7&user[name]=ann&ids[]=1&ids[]=2&x[y][z]=3");
        assert_eq!(
            Value::Object(p.0),
            json!({"a":"1","user":{"id":"7","name":"ann"},"ids":["1","2"],"x":{"y":{"z":"3"}}})
        );
    }

    #[test]
    fn array_valued_vsn_is_not_a_string() {
        let p = Params::from_query("vsn[]=2.0.0");
        assert_eq!(p.get_str("vsn"), None);
        assert_eq!(p.get("vsn"), Some(&json!(["2.0.0"])));
    }

    #[test]
    fn odd_keys_do_not_panic() {
        for q in [
            "[",
            "]",
            "[]=1",
            "a[=1",
            "a]=1",
            "a[]]=1",
            "a[][]=1",
            "a[b]=1&a=2&a[c]=3",
            "=",
            "&&",
        ] {
            let _ = Params::from_query(q);
        }
    }
}
