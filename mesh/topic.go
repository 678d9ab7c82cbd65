package mesh

import (
	"fmt"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
)

// joinTopic registers validate on a fleet topic, joins it and subscribes.
// leave undoes all three, in reverse order.
func joinTopic(ps *pubsub.PubSub, name string, validate pubsub.ValidatorEx) (*pubsub.Topic, *pubsub.Subscription, func(), error) {
	if err := ps.RegisterTopicValidator(name, validate); err != nil {
		return nil, nil, nil, fmt.Errorf("mesh: register validator for %s: %w", name, err)
	}
	topic, err := ps.Join(name)
	if err != nil {
		ps.UnregisterTopicValidator(name)
		return nil, nil, nil, fmt.Errorf("mesh: join %s: %w", name, err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		topic.Close()
		ps.UnregisterTopicValidator(name)
		return nil, nil, nil, fmt.Errorf("mesh: subscribe %s: %w", name, err)
	}
	return topic, sub, func() {
		sub.Cancel()
		topic.Close()
		ps.UnregisterTopicValidator(name)
	}, nil
}
