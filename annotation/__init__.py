"""Label Studio: server life cycle, labeling config, push/pull, consensus (issue 3). May import rf1m."""
