//! Store URLs, config TOML and options as every binding passes them.
//!
//! Never a panic; a secret given in the input (a URL's password, a TOML or option value whose
//! name says secret or token) appears in no error message and no `Debug` output.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use piecestore::Config;
use piecestore::config::OptionValue;

#[derive(Arbitrary, Debug)]
struct Input {
    url: String,
    toml: String,
    options: Vec<(String, String)>,
}

/// Whether a name holds a secret.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("secret") || n.contains("token") || n.contains("password")
}

/// A secret worth looking for: long enough not to occur by chance, given once in `input`.
fn worth(secret: &str, input: &str) -> bool {
    secret.len() >= 12 && input.matches(secret).count() == 1
}

fn secrets_in_toml(v: &toml::Value, name: &str, text: &str, out: &mut Vec<String>) {
    match v {
        toml::Value::String(s) if secret_name(name) && worth(s, text) => out.push(s.clone()),
        toml::Value::Table(t) => {
            for (k, v) in t {
                secrets_in_toml(v, k, text, out);
            }
        }
        toml::Value::Array(a) => {
            for v in a {
                secrets_in_toml(v, name, text, out);
            }
        }
        _ => {}
    }
}

/// Whether a URL query parameter names one of the store's credentials (as `set_option` spells
/// them: any case, with or without `_`/`-`).
fn credential_option(name: &str) -> bool {
    let n: String = name
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    n == "secretkey" || n == "sessiontoken"
}

/// The password of a URL's userinfo, and the values of query options that are credentials.
fn secrets_in_url(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
            && worth(password, url)
        {
            out.push(password.to_string());
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && credential_option(k)
                && worth(v, url)
            {
                out.push(v.to_string());
            }
        }
    }
    out
}

fn assert_hidden(secrets: &[String], shown: &str, what: &str) {
    for s in secrets {
        assert!(
            !shown.contains(s.as_str()),
            "{what} shows the secret {s:?}: {shown}"
        );
    }
}

/// What a parse shows a user: its error's Display and Debug, or the config's Debug.
fn shown(result: &piecestore::Result<Config>) -> String {
    match result {
        Ok(c) => format!("{c:?}"),
        Err(e) => format!("{e}\n{e:?}"),
    }
}

/// `input` with `secret` replaced by as many of a character the secret lacks: the same input,
/// had the secret been another.
fn replaced(input: &str, secret: &str) -> String {
    let fill = ['Q', 'Z', 'X']
        .into_iter()
        .find(|c| !secret.contains(*c))
        .unwrap_or('Q');
    input.replace(secret, &fill.to_string().repeat(secret.chars().count()))
}

/// No secret of `input` shows in `text`, what `parse` shows for it. A secret leaks when it
/// shows for `input` and no longer shows once it is replaced in `input`: text that only spells
/// the secret, put together from other parts of the input and the message's own words (a path
/// holding all but its last character, followed by the message's comma), is not the secret.
fn check(what: &str, input: &str, text: &str, secrets: &[String], parse: impl Fn(&str) -> String) {
    for s in secrets {
        if text.contains(s.as_str()) {
            assert!(
                parse(&replaced(input, s)).contains(s.as_str()),
                "{what} shows the secret {s:?}: {text}"
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let secrets = secrets_in_url(&input.url);
    let parse_url = |u: &str| shown(&Config::from_url(u));
    check(
        "from_url",
        &input.url,
        &parse_url(&input.url),
        &secrets,
        parse_url,
    );

    let mut secrets = Vec::new();
    if let Ok(table) = input.toml.parse::<toml::Table>() {
        secrets_in_toml(&toml::Value::Table(table), "", &input.toml, &mut secrets);
    }
    let parsed = Config::from_toml(&input.toml);
    check("from_toml", &input.toml, &shown(&parsed), &secrets, |t| {
        shown(&Config::from_toml(t))
    });

    let mut c = parsed.unwrap_or_else(|_| Config::from_url("memory://").expect("memory://"));
    // Option names are shown in errors (an unknown option is named, escaped as Debug escapes
    // it): a value that is part of any name, as given or as shown, is no secret to look for.
    // (A name holding NUL then "000…" shows as `\0000…`, which contains "0000…".)
    let names: String = input
        .options
        .iter()
        .map(|(n, _)| format!("{n}\n{n:?}"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut given = Vec::new();
    for (name, value) in input.options.iter().take(16) {
        if secret_name(name) && value.len() >= 12 && !names.contains(value.as_str()) {
            given.push(value.clone());
        }
        if let Err(e) = c.set_option(name, OptionValue::from_option_text(name, value)) {
            assert_hidden(&given, &e.to_string(), "set_option");
        }
    }
    // A value set as a secret may still show in Debug when another option holds the same text.
    let others: String = input
        .options
        .iter()
        .filter(|(n, _)| !secret_name(n))
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    given.retain(|s| !others.contains(s.as_str()) && !input.toml.contains(s.as_str()));
    assert_hidden(&given, &format!("{c:?}"), "Debug after set_option");
});
