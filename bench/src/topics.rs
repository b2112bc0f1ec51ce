//! Topic creation against topic count, behind `quiver bench topics`: creates topics one after
//! another through the admin API (`UPDATE_AND_CREATE_TOPIC` on every master, each answered once
//! the broker has saved it and registered it with the name servers) and reports the mean time
//! of each step of creations, so a cost that grows with the number of topics shows.

use std::time::Instant;

use quiver_net::admin::{Admin, BrokerSelector, TopicSpec};
use serde::Serialize;

/// One step of creations.
#[derive(Debug, Clone, Serialize)]
pub struct CreateStep {
    /// Topics created when the step ended.
    pub topics: usize,
    /// Mean time of one creation in the step, ms.
    pub mean_ms: f64,
}

/// Creates `count` topics named `<prefix>-<n>` with `queues` queues, reporting each `every`.
pub async fn create_topics(
    namesrv: &str,
    prefix: &str,
    count: usize,
    queues: i32,
    every: usize,
    mut report: impl FnMut(&CreateStep),
) -> Result<Vec<CreateStep>, quiver_net::admin::AdminError> {
    let admin = Admin::new([namesrv])?;
    let every = every.max(1);
    let mut steps = Vec::new();
    let mut started = Instant::now();
    for n in 0..count {
        let spec = TopicSpec::new(format!("{prefix}-{n}"), queues);
        admin.create_topic(&spec, &BrokerSelector::All).await?;
        if (n + 1) % every == 0 || n + 1 == count {
            let done = (n + 1) % every;
            let made = if done == 0 { every } else { done };
            let step = CreateStep {
                topics: n + 1,
                mean_ms: started.elapsed().as_secs_f64() * 1e3 / made as f64,
            };
            report(&step);
            steps.push(step);
            started = Instant::now();
        }
    }
    Ok(steps)
}
