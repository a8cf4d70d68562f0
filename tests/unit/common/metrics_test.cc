// MetricsExporter: /metrics in the Prometheus text format on its own port; other paths 404.
#include "common/metrics.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "common/metric_names.h"
#include "common/status_matchers.h"
#include "prometheus/counter.h"

namespace mp {
namespace {

std::string Get(const std::string& address, const std::string& request) {
  const size_t colon = address.rfind(':');
  int port = 0;
  EXPECT_TRUE(absl::SimpleAtoi(address.substr(colon + 1), &port));
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

TEST(MetricsExporterTest, ServesTheRegistry) {
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<MetricsExporter> m,
                          MetricsExporter::Start("127.0.0.1:0", "test"));
  ASSERT_FALSE(m->address().empty());
  EXPECT_FALSE(absl::EndsWith(m->address(), ":0"));
  prometheus::BuildCounter()
      .Name("millipede_test_events_total")
      .Help("h")
      .Register(m->registry())
      .Add({{"kind", "a"}})
      .Increment(3);
  // Several clients at once, a few times each.
  std::vector<std::thread> clients;
  std::atomic<int> good{0};
  for (int i = 0; i < 4; ++i) {
    clients.emplace_back([&] {
      for (int j = 0; j < 5; ++j) {
        const std::string r = Get(m->address(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        if (absl::StartsWith(r, "HTTP/1.1 200") &&
            absl::StrContains(r, "millipede_test_events_total{kind=\"a\"} 3") &&
            absl::StrContains(r, "millipede_build_info{") &&
            absl::StrContains(r, "text/plain; version=0.0.4")) {
          ++good;
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(good.load(), 20);
  EXPECT_TRUE(absl::StartsWith(Get(m->address(), "GET /other HTTP/1.1\r\n\r\n"), "HTTP/1.1 404"));
  EXPECT_TRUE(
      absl::StartsWith(Get(m->address(), "POST /metrics HTTP/1.1\r\n\r\n"), "HTTP/1.1 405"));
  // A client that connects and sends nothing does not block the next one for long.
  std::thread idle([&] { Get(m->address(), ""); });
  const absl::Time start = absl::Now();
  EXPECT_TRUE(absl::StartsWith(Get(m->address(), "GET /metrics HTTP/1.1\r\n\r\n"), "HTTP/1.1 200"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  idle.join();
}

TEST(MetricsExporterTest, NoEndpointAndBadAddresses) {
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<MetricsExporter> off, MetricsExporter::Start("", "x"));
  EXPECT_TRUE(off->address().empty());
  MP_EXPECT_ERROR(MetricsExporter::Start("nonsense", "x"), absl::StatusCode::kInvalidArgument,
                  "host:port");
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<MetricsExporter> a,
                          MetricsExporter::Start("127.0.0.1:0", "x"));
  MP_EXPECT_ERROR(MetricsExporter::Start(a->address(), "x"), absl::StatusCode::kUnavailable,
                  "cannot serve metrics");
}

}  // namespace
}  // namespace mp
