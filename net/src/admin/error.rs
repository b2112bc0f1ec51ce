//! Why an admin operation failed, in terms an operator can act on.

/// A server the admin client could not reach, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    /// The `host:port` tried.
    pub addr: String,
    /// What went wrong (`connection refused`, `no answer within 3s`…).
    pub reason: String,
}

/// Why an admin operation failed. Every variant names the server or object involved, so the
/// message alone tells the operator what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No name server address was given.
    #[error("no name server address given")]
    NoNameServer,
    /// An address is not `host:port`.
    #[error("{addr:?} is not a host:port address")]
    BadAddress {
        /// What was given.
        addr: String,
    },
    /// Every name server failed to answer.
    #[error("{}", unreachable_namesrv(.0))]
    NameServerUnreachable(Vec<Unreachable>),
    /// A broker failed to answer.
    #[error("cannot reach broker {}: {}", .0.addr, .0.reason)]
    BrokerUnreachable(Unreachable),
    /// A server answered with an error code.
    #[error("{server} refused {what}: {remark} (code {code})")]
    Refused {
        /// The server's address.
        server: String,
        /// What was asked.
        what: &'static str,
        /// Its response code.
        code: i32,
        /// Its explanation.
        remark: String,
    },
    /// A server's answer cannot be read.
    #[error("{server} answered {what} with something unreadable: {reason}")]
    BadAnswer {
        /// The server's address.
        server: String,
        /// What was asked.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// The name servers know no route for the topic.
    #[error("no route for topic {topic}")]
    NoRoute {
        /// The topic.
        topic: String,
    },
    /// No broker fits the request (an unknown cluster, a broker name not in the route…).
    #[error("{0}")]
    NoBroker(String),
    /// The thing looked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An argument is not acceptable; the text says which and why.
    #[error("{0}")]
    Invalid(String),
    /// The group has live consumers, which would overwrite an offset reset with their own
    /// commits.
    #[error(
        "consumer group {group} has {} online consumer(s) ({})",
        .clients.len(),
        .clients.join(", ")
    )]
    ConsumersOnline {
        /// The group.
        group: String,
        /// Client ids of its members.
        clients: Vec<String>,
    },
}

fn unreachable_namesrv(attempts: &[Unreachable]) -> String {
    match attempts {
        [one] => format!("cannot reach name server {}: {}", one.addr, one.reason),
        many => {
            let each: Vec<String> = many
                .iter()
                .map(|u| format!("{}: {}", u.addr, u.reason))
                .collect();
            format!("cannot reach any name server ({})", each.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_server_and_the_cause() {
        let one = AdminError::NameServerUnreachable(vec![Unreachable {
            addr: "127.0.0.1:9876".into(),
            reason: "connection refused".into(),
        }]);
        assert_eq!(
            one.to_string(),
            "cannot reach name server 127.0.0.1:9876: connection refused"
        );
        let two = AdminError::NameServerUnreachable(vec![
            Unreachable {
                addr: "a:1".into(),
                reason: "x".into(),
            },
            Unreachable {
                addr: "b:2".into(),
                reason: "y".into(),
            },
        ]);
        assert_eq!(
            two.to_string(),
            "cannot reach any name server (a:1: x; b:2: y)"
        );
    }
}
