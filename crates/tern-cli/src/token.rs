//! `tern token …`: operator tokens on the server (admin only): create, list, revoke,
//! rotate.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::json;
use tern_server::api::types::{IssuedToken, TokenView};

use crate::ops::{print_json, query_value, typed, when, Client};

/// `tern token …`.
#[derive(Subcommand)]
pub enum Command {
    /// Create a token; prints it (shown only this once).
    Create {
        /// Its name: 1 to 64 of A-Z a-z 0-9 - _ . (recorded in the events its calls cause).
        name: String,
        /// viewer: read only; operator: also update devices, plans, rollouts, the fleet;
        /// admin: also manage tokens and remove devices or groups.
        #[arg(long)]
        role: String,
        /// When it stops working: a date (2027-01-31, midnight UTC), a time
        /// (2027-01-31T18:00:00Z) or a duration from now (90m, 12h, 30d, 8w). Default: never.
        #[arg(long)]
        expires: Option<String>,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (revoked ones too): name, role, state, expiry.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it stops working at once (the last admin token cannot be revoked).
    Revoke {
        /// Token name.
        name: String,
    },
    /// Replace a token with a new one (same name, role and expiry); prints the new token;
    /// the old one stops working at once.
    Rotate {
        /// Token name.
        name: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `tern token` command.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let client = Client::connect()?;
    match cmd {
        Command::Create { name, role, expires, json } => {
            let now = now_millis();
            let expires_at = expires.as_deref().map(|text| parse_expiry(text, now)).transpose()?;
            if expires_at.is_some_and(|at| at <= now) {
                bail!("--expires {}: that is not in the future", expires.unwrap_or_default());
            }
            let body = json!({ "name": name, "role": role, "expires_at": expires_at });
            let answer = client.post_json("/api/tokens", body).with_context(|| format!("token {name}"))?;
            issued(answer, json)?;
        }
        Command::List { json } => {
            let answer = client.get_all("/api/tokens")?;
            if json {
                print_json(&answer)?;
                return Ok(ExitCode::SUCCESS);
            }
            let tokens: Vec<TokenView> = typed(answer)?;
            println!("{:<24} {:<9} {:<8} {:<24} EXPIRES", "NAME", "ROLE", "STATE", "CREATED");
            for t in &tokens {
                let expires = t.expires_at.map(|at| when(Some(at))).unwrap_or_else(|| "never".into());
                println!("{:<24} {:<9} {:<8} {:<24} {}", t.name, t.role, t.state, when(Some(t.created_at)), expires);
            }
        }
        Command::Revoke { name } => {
            let answer = client
                .delete(&format!("/api/tokens/{}", query_value(&name)))
                .with_context(|| format!("token {name}"))?;
            let view: TokenView = typed(answer)?;
            println!("token {} ({}) revoked", view.name, view.role);
        }
        Command::Rotate { name, json } => {
            let path = format!("/api/tokens/{}/rotate", query_value(&name));
            let answer = client.post_json(&path, json!({})).with_context(|| format!("token {name}"))?;
            issued(answer, json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn issued(answer: serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&answer);
    }
    let token: IssuedToken = typed(answer)?;
    let expires = token.view.expires_at.map(|at| when(Some(at))).unwrap_or_else(|| "never".into());
    println!("token {} (role {}, expires {expires})", token.view.name, token.view.role);
    println!("token (shown only now): {}", token.token);
    Ok(())
}

fn now_millis() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// `--expires`: a duration from `now` (`90m`, `12h`, `30d`, `8w`, `45s`), a date
/// (`YYYY-MM-DD`, midnight UTC) or a UTC time (`YYYY-MM-DDTHH:MM[:SS]Z`); Unix milliseconds.
pub(crate) fn parse_expiry(text: &str, now: i64) -> anyhow::Result<i64> {
    let bad = || {
        anyhow::anyhow!("--expires {text}: expected a date (2027-01-31), a UTC time (2027-01-31T18:00:00Z) or a duration (90m, 12h, 30d, 8w)")
    };
    if let Some(unit) = text.chars().last().filter(|c| c.is_ascii_alphabetic() && !text.contains('-')) {
        let count: i64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
        let seconds = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        return count.checked_mul(seconds * 1000).and_then(|ms| now.checked_add(ms)).ok_or_else(bad);
    }
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z').ok_or_else(bad)?)),
        None => (text, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts.as_slice() else { return Err(bad()) };
    let (y, m, d): (i64, i64, i64) =
        (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
    if !(1..=12).contains(&m) || !(1..=days_in_month(y, m)).contains(&d) || y.to_string().len() != 4 {
        return Err(bad());
    }
    let mut seconds = days_from_civil(y, m, d) * 86_400;
    if let Some(time) = time {
        let fields: Vec<i64> = time.split(':').map(|f| f.parse().map_err(|_| bad())).collect::<anyhow::Result<_>>()?;
        let (h, min, s) = match fields.as_slice() {
            [h, min] => (*h, *min, 0),
            [h, min, s] => (*h, *min, *s),
            _ => return Err(bad()),
        };
        if !(0..24).contains(&h) || !(0..60).contains(&min) || !(0..60).contains(&s) {
            return Err(bad());
        }
        seconds += h * 3600 + min * 60 + s;
    }
    Ok(seconds * 1000)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the civil-from-days inverse, after
/// Howard Hinnant's published algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_forms() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_expiry("90m", now).unwrap(), now + 90 * 60_000);
        assert_eq!(parse_expiry("30d", now).unwrap(), now + 30 * 86_400_000);
        assert_eq!(parse_expiry("1970-01-02", now).unwrap(), 86_400_000);
        assert_eq!(parse_expiry("2000-03-01", now).unwrap(), 951_868_800_000);
        assert_eq!(parse_expiry("2027-01-31T18:00:00Z", now).unwrap(), 1_801_418_400_000);
        assert_eq!(parse_expiry("2027-01-31T18:00Z", now).unwrap(), 1_801_418_400_000);
        for bad in ["soon", "12x", "2027-02-30", "2027-13-01", "2027-01-31T25:00Z", "2027-01-31T18:00", "-5d", "d"] {
            assert!(parse_expiry(bad, now).is_err(), "{bad}");
        }
    }
}
