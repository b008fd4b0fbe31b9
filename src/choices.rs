//! Enums of named choices (I/O backend, wake mode, TLS version, bench
//! workload…): [`named_choices!`] gives each its `Display` and `FromStr`
//! from one name function and one `ALL` list, so the names in flags, the
//! config file and error messages are one definition.
//!
//! A module of its own, below everything that uses it, so that the
//! modules that declare such enums (src/tls.rs, src/server/config.rs,
//! src/bench/) need not import one another for it.

/// Implements `Display` (the name) and `FromStr` (by name; an unknown one
/// is an error listing every name) for `$t`, from its
/// `fn $name(self) -> &'static str` and its `ALL` array. `$what` names the
/// kind of choice in the error.
macro_rules! named_choices {
    ($t:ty, $name:ident, $what:literal) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.$name())
            }
        }

        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                <$t>::ALL
                    .into_iter()
                    .find(|v| v.$name() == s)
                    .ok_or_else(|| {
                        let names: Vec<&str> = <$t>::ALL.iter().map(|v| v.$name()).collect();
                        format!(
                            "unknown {} `{s}`; expected one of: {}",
                            $what,
                            names.join(", ")
                        )
                    })
            }
        }
    };
}
pub(crate) use named_choices;

#[cfg(test)]
mod tests {
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Fruit {
        Apple,
        Pear,
    }

    impl Fruit {
        const ALL: [Fruit; 2] = [Fruit::Apple, Fruit::Pear];
        fn name(self) -> &'static str {
            match self {
                Fruit::Apple => "apple",
                Fruit::Pear => "pear",
            }
        }
    }

    super::named_choices!(Fruit, name, "fruit");

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_choices() {
        for f in Fruit::ALL {
            assert_eq!(f.to_string().parse::<Fruit>(), Ok(f));
        }
        assert_eq!(
            "plum".parse::<Fruit>(),
            Err("unknown fruit `plum`; expected one of: apple, pear".to_owned())
        );
    }
}
