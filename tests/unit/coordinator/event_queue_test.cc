// EventQueue: events in order; once a client falls behind, progress coalesces and tokens merge;
// the final status follows the queued events.
#include "coordinator/event_queue.h"

#include <gtest/gtest.h>

#include <thread>

namespace mp {
namespace {

using millipede::v1::GenerateEvent;

GenerateEvent Progress(uint64_t done) {
  GenerateEvent e;
  e.mutable_progress()->set_tokens_done(done);
  return e;
}

GenerateEvent Token(int32_t id, const std::string& text) {
  GenerateEvent e;
  e.mutable_tokens()->add_token_ids(id);
  e.mutable_tokens()->set_text(text);
  return e;
}

TEST(EventQueueTest, KeepsEveryEventForAClientThatKeepsUp) {
  EventQueue q;
  q.Push(Progress(1));
  q.Push(Progress(2));
  q.Close(absl::OkStatus());
  q.Push(Progress(3));  // after Close: dropped
  GenerateEvent e;
  absl::Status final_status;
  ASSERT_EQ(q.Pop(absl::ZeroDuration(), &e, &final_status), EventQueue::PopResult::kEvent);
  EXPECT_EQ(e.progress().tokens_done(), 1u);
  ASSERT_EQ(q.Pop(absl::ZeroDuration(), &e, &final_status), EventQueue::PopResult::kEvent);
  EXPECT_EQ(e.progress().tokens_done(), 2u);
  ASSERT_EQ(q.Pop(absl::ZeroDuration(), &e, &final_status), EventQueue::PopResult::kClosed);
  EXPECT_TRUE(final_status.ok());
}

TEST(EventQueueTest, CoalescesBehindASlowClient) {
  EventQueue q;
  for (int i = 0; i < 100; ++i) q.Push(Progress(i));
  for (int i = 0; i < 10; ++i) q.Push(Token(i, std::string(1, static_cast<char>('a' + i))));
  q.Close(absl::CancelledError("stop"));
  std::vector<GenerateEvent> events;
  GenerateEvent e;
  absl::Status final_status;
  while (q.Pop(absl::ZeroDuration(), &e, &final_status) == EventQueue::PopResult::kEvent) {
    events.push_back(e);
  }
  EXPECT_TRUE(absl::IsCancelled(final_status));
  ASSERT_EQ(events.size(), EventQueue::kCoalesceAfter + 1);
  // The last progress event carries the latest value; the tokens arrive merged, in order.
  EXPECT_EQ(events[EventQueue::kCoalesceAfter - 1].progress().tokens_done(), 99u);
  const auto& t = events.back().tokens();
  ASSERT_EQ(t.token_ids_size(), 10);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(t.token_ids(i), i);
  EXPECT_EQ(t.text(), "abcdefghij");
}

TEST(EventQueueTest, PopWaitsForEvents) {
  EventQueue q;
  GenerateEvent e;
  absl::Status final_status;
  EXPECT_EQ(q.Pop(absl::Milliseconds(10), &e, &final_status), EventQueue::PopResult::kTimeout);
  std::thread t([&] {
    absl::SleepFor(absl::Milliseconds(20));
    q.Push(Progress(7));
  });
  EXPECT_EQ(q.Pop(absl::Seconds(5), &e, &final_status), EventQueue::PopResult::kEvent);
  EXPECT_EQ(e.progress().tokens_done(), 7u);
  t.join();
}

}  // namespace
}  // namespace mp
