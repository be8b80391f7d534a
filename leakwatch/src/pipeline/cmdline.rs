//! Credentials that only a whole command line shows: `curl -u USER:PASS` and
//! `mysql -u app -pPASS` are several arguments, and each scanned alone has no `curl` or
//! `mysql` before it. The arguments are joined with spaces (as a shell history line has
//! them), scanned once, and each finding is mapped back to the argument that holds it.
use crate::detect::{Detector, Finding};

/// Findings in `args` joined by spaces that no argument scanned alone gave (`alone`: the
/// (argument, fingerprint) pairs already found), each as (argument index, finding with its
/// span in that argument). A finding running past its argument's end is cut there.
pub fn findings(args: &[&[u8]], d: &Detector, alone: &[(usize, String)]) -> Vec<(usize, Finding)> {
    if args.len() < 2 {
        return Vec::new();
    }
    let mut joined = Vec::with_capacity(args.iter().map(|a| a.len() + 1).sum());
    let mut starts = Vec::with_capacity(args.len());
    for a in args {
        if !joined.is_empty() {
            joined.push(b' ');
        }
        starts.push(joined.len());
        joined.extend_from_slice(a);
    }
    let mut out = Vec::new();
    for mut f in d.scan(&joined) {
        // The argument holding the secret's first byte.
        let i = starts.partition_point(|&s| s <= f.start) - 1;
        if alone.iter().any(|(j, fp)| *j == i && *fp == f.fingerprint) {
            continue;
        }
        f.start -= starts[i];
        f.end = (f.end - starts[i]).min(args[i].len());
        f.line = 1;
        out.push((i, f));
    }
    crate::wipe::vec(&mut joined);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{samples, Engine};

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_password_in_an_argument_of_its_own_is_found_in_that_argument() {
        let engine = Engine::builtin();
        let d = Detector::new(&engine, None);
        let mut rng = samples::Rng::from_time();
        let pass = rng.string(
            b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789",
            16,
        );
        let user = format!("deploy:{pass}");
        let v = args(&["curl", "-s", "-u", &user, "http://10.0.0.1/"]);
        let refs: Vec<&[u8]> = v.iter().map(|a| a.as_slice()).collect();
        // Alone, no argument shows it.
        assert!(refs.iter().all(|a| d.scan(a).is_empty()));
        let found = findings(&refs, &d, &[]);
        assert_eq!(
            found.len(),
            1,
            "{:?}",
            found.iter().map(|f| &f.1.rule).collect::<Vec<_>>()
        );
        let (i, f) = &found[0];
        assert_eq!((*i, f.rule.as_str()), (3, "curl-user-password"));
        assert_eq!(&v[3][f.start..f.end], pass.as_bytes());

        let p = format!("-p{pass}");
        let v = args(&["/usr/bin/mysql", "-h", "db", "-u", "app", &p, "prod"]);
        let refs: Vec<&[u8]> = v.iter().map(|a| a.as_slice()).collect();
        let found = findings(&refs, &d, &[]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, 5);
        assert_eq!(&v[5][found[0].1.start..found[0].1.end], pass.as_bytes());
    }

    #[test]
    fn what_an_argument_showed_alone_is_not_found_twice() {
        let engine = Engine::builtin();
        let d = Detector::new(&engine, None);
        let mut rng = samples::Rng::from_time();
        let (key, _) = samples::sample("anthropic-api-key", &mut rng).unwrap();
        let h = format!("x-api-key: {key}");
        let v = args(&["curl", "-H", &h, "https://api.example.com/"]);
        let refs: Vec<&[u8]> = v.iter().map(|a| a.as_slice()).collect();
        let alone = d.scan(refs[2]);
        assert_eq!(alone.len(), 1);
        let fp = alone[0].fingerprint.clone();
        assert!(findings(&refs, &d, &[(2, fp.clone())]).is_empty());
        // Without that, the joined line finds it in the same argument.
        let again = findings(&refs, &d, &[]);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].0, &again[0].1.fingerprint), (2, &fp));
        // One argument: nothing to join.
        assert!(findings(&refs[2..3], &d, &[]).is_empty());
    }
}
